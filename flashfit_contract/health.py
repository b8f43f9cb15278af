"""The fields of the server's /health and /ready bodies: the server writes them
(flashfit_server/routers/health.py); the deploy gate, the proxy switch and `flashfit doctor` read
them. Pure constants, no imports."""

# /health: always 200 while the process runs.
STATUS = "status"
VERSION = "version"  # the APP_VERSION the container was started with
MODELS = "models"  # {"<slot>_loaded": bool}
VECTOR_STORES = "vector_stores"  # {"<slot>_index_size": int}
DEVICE = "device"  # {"type": "cpu" | "cuda", ...}
CATALOG_SYNC = "catalog_sync"  # only with a shared catalogue: applied seq, log head, lag, problem
MODEL_LOADED_SUFFIX = "_loaded"
INDEX_SIZE_SUFFIX = "_index_size"

# /ready: 200 with STATUS READY, else 503 with NOT_READY (still loading) or FAILED (never will be).
CHECKS = "checks"
MODELS_LOADED = "models_loaded"
VECTOR_STORES_READY = "vector_stores_ready"
WORKERS_READY = "workers_ready"
ERRORS = "errors"  # {"<slot>" | "startup" | "data_folder": "why"}
READY = "ready"
NOT_READY = "not_ready"
FAILED = "failed"
