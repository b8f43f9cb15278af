"""The FlashFit recommendation server. Kept import-light: heavy modules load inside the app."""

import os

# torch and faiss each run OpenMP thread teams from different threads of one process (the
# inference thread, the search threads). Spinning idle teams steal the cores the other needs:
# measured here, a CLIP call went from ~5 ms to 40-170 ms. Sleeping waiters avoid that. It must
# be set before either library starts OpenMP, hence here, the first module any process imports.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
