"""The Docker engine boundary: the one way in (`connect`), the typed surface FlashFit asks of the
engine (`protocol`), and the one table from SDK errors to flashfit's own (`errors`).

Nothing here imports the Docker SDK at import time, so `flashfit --help` stays cheap; the SDK is
imported inside the functions that talk to the engine."""
