"""What the server and its operator share: the Prometheus metric names, the model slots, the
fields of /health and /ready, and the data folder's format (its one validator). Standard
library only, and importing any of it has no side effects.

They live outside both packages on purpose: `flashfit_server/__init__.py` sets OMP_WAIT_POLICY
for the server process (it must run before torch or faiss start OpenMP), so the CLI importing
anything under flashfit_server set it in the CLI process too; and the server must not import
flashfit_ops (typer, docker, boto3). tests/unit/test_layering.py holds both directions."""
