"""`flashfit-server`: serve, probe, token, models make-tiny/pull, ingest, catalog publish, bench-store, clear-cache.

Only the standard library is imported at parse time (so `--help` and `probe`, which the
container HEALTHCHECK runs every few seconds, stay fast); each command imports what it needs.
Exit codes: 0 ok, 1 failed (probe: not ready), 2 bad configuration or usage, 3 the app failed to start,
4 refused (catalog publish: the shared log is not this folder's to seed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

from flashfit_server.probe import DEFAULT_TIMEOUT as DEFAULT_PROBE_TIMEOUT
from flashfit_server.probe import DEFAULT_URL as DEFAULT_PROBE_URL

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_START_FAILED, EXIT_REFUSED = 0, 1, 2, 3, 4


def _settings():  # noqa: ANN202
    from flashfit_server.settings import Settings, SettingsError

    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


# --- serve ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    problems = settings.production_problems()
    if problems:
        for problem in problems:
            print(f"error: refusing to start with ENVIRONMENT={settings.environment}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.device == "cuda":  # before uvicorn, so the refusal is one line, not a lifespan traceback
        from flashfit_server.models.device import DeviceUnavailable, choose_device

        try:
            choose_device("cuda", settings.precision, {"cpu": 1, "cuda": 1})
        except DeviceUnavailable as exc:
            print(f"error: refusing to start: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
    workers = args.workers or settings.workers
    os.environ["WORKERS"] = str(workers)  # workers read it to split CPU threads between them
    made: list[str] = []  # temporary folders this run made, removed however it ends
    socket_path = os.environ.get("FLASHFIT_SOCKET") or None
    try:
        if workers > 1:
            _share_between_workers(made)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            _clear_metrics_dir(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        code = _run_uvicorn(args, settings, workers, socket_path)
        if code:
            return code
    finally:
        if socket_path:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
    # uvicorn has drained every request and run the lifespan shutdown (stores are written at
    # write time, never at exit). Skip the interpreter's teardown: joining torch's and faiss's
    # thread pools there kept a stopped container alive for seconds, which a deploy waits on.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)


def _share_between_workers(made: list[str]) -> None:
    """Folders the workers share: metric files, and readiness (flashfit_server.readiness). Until
    uvicorn's supervisor installs its own handlers, SIGTERM and SIGINT raise SystemExit, so the
    caller's `finally` still removes the folders (the default action would kill us where we stand)."""
    import signal
    import tempfile

    from flashfit_server.readiness import READY_DIR_ENV

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made.append(tempfile.mkdtemp(prefix="flashfit-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made[-1]
    made.append(tempfile.mkdtemp(prefix="flashfit-ready-"))
    os.environ[READY_DIR_ENV] = made[-1]


def _run_uvicorn(args: argparse.Namespace, settings, workers: int, socket_path: str | None) -> int:  # noqa: ANN001
    import uvicorn

    from flashfit_server.log import uvicorn_log_config

    config = uvicorn.Config(
        "flashfit_server.main:app",
        host=args.host,
        port=args.port,
        workers=workers,
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        timeout_graceful_shutdown=30,
        # The supervisor kills a worker that misses a 5 s ping; model loading on a busy host can.
        timeout_worker_healthcheck=30,
    )
    # TCP (health gate, doctor, backups use the container address) and, when FLASHFIT_SOCKET is
    # set, a Unix socket in the folder shared with the proxy: nginx reaches the backend through a
    # slot link to it, so a deploy switches traffic by renaming a link instead of reloading nginx.
    sockets = [config.bind_socket()]
    if socket_path:
        sockets.append(_bind_unix(socket_path))
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=sockets).run()
        return EXIT_OK
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    # not started: the app failed to start (as uvicorn.run reports it)
    return EXIT_OK if server.started else EXIT_START_FAILED


def _bind_unix(path: str):  # noqa: ANN202
    """A listening Unix socket at `path`: a stale file of an earlier run is removed first, and the
    socket is made connectable by any uid (nginx's workers run as another user)."""
    import socket

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
    except OSError as exc:
        print(f"error: cannot listen on {path}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    return sock


def _clear_metrics_dir(folder: Path) -> int:
    """Counter files of a previous run would be summed into this one's."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in folder.glob("*.db"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


# --- probe ---------------------------------------------------------------------------------------


PROBE_BODY_BYTES = 64 << 10


def cmd_probe(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    body = b""
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:  # noqa: S310
            status = response.status
            body = response.read(PROBE_BODY_BYTES) if args.body else b""
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"probe {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"probe {args.url}: {status}")
    if body:  # doctor reads a task's /health this way, from inside the overlay network
        print(body.decode("utf-8", errors="replace"))
    return EXIT_OK if status == 200 else EXIT_FAILED


# --- token ---------------------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    from flashfit_server.auth import mint_token

    settings = _settings()
    if not 1 <= args.ttl <= settings.jwt_max_lifetime:
        print(f"error: --ttl must be between 1 and JWT_MAX_LIFETIME ({settings.jwt_max_lifetime}) seconds; "
              "the server refuses tokens that live longer", file=sys.stderr)
        return EXIT_CONFIG
    if not settings.jwt_secret_from_env:
        print("warning: JWT_SECRET_KEY is not set; this token is signed with the dev default", file=sys.stderr)
    print(mint_token(settings.jwt_secret_key, subject=args.subject, ttl_seconds=args.ttl))
    return EXIT_OK


# --- models --------------------------------------------------------------------------------------


def cmd_make_tiny(args: argparse.Namespace) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from flashfit_server.models.tiny import make_checkpoints

    settings = _settings()
    paths = make_checkpoints(
        Path(args.dir), seed=args.seed, size=args.size,
        clip_name=settings.clip_model, blip_name=settings.blip_model, fashion_name=settings.fashion_model,
    )
    for slot, path in paths.items():
        print(f"{slot}: {path}")
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    os.environ["HF_HUB_OFFLINE"] = "0"  # this one command is meant to reach the hub
    from huggingface_hub import snapshot_download

    settings = _settings()
    for name in (settings.clip_model, settings.blip_model, settings.fashion_model):
        dest = Path(args.dir) / name
        snapshot_download(repo_id=name, local_dir=dest, allow_patterns=["*.json", "*.txt", "*.safetensors"])
        if not any(dest.glob("*.safetensors")):  # some repos ship only the pickle format
            snapshot_download(repo_id=name, local_dir=dest, allow_patterns=["pytorch_model.bin"])
        print(f"{name}: {dest}")
    return EXIT_OK


# --- ingest --------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def cmd_ingest(args: argparse.Namespace) -> int:
    import time

    from flashfit_server.datastore import DataStore, NewItem
    from flashfit_server.errors import ApiError
    from flashfit_server.fusion import initial_weights
    from flashfit_server.images import decode_image
    from flashfit_server.models.device import DeviceUnavailable
    from flashfit_server.models.registry import ModelNames, ModelRegistry
    from flashfit_server.service import embed_catalogue_sync
    from flashfit_server.vector_store import configure_faiss

    settings = _settings()
    folder = Path(args.folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        print(f"no images under {folder}", file=sys.stderr)
        return EXIT_FAILED
    batch_size = args.batch_size or settings.max_batch_size
    registry = ModelRegistry(
        settings.model_cache_dir, ModelNames(settings.clip_model, settings.blip_model, settings.fashion_model),
        max_batch_size=batch_size, threads=settings.torch_threads or (os.cpu_count() or 1),
        caption_max_tokens=settings.caption_max_tokens, device=settings.device, precision=settings.precision,
        max_batch_size_cuda=args.batch_size or settings.max_batch_size_cuda,
    )
    try:
        batch_size = registry.select_device().max_batch_size
    except DeviceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not registry.load_all():
        for slot, state in registry.slots.items():
            if state.error:
                print(f"error: {slot}: {state.error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_faiss(os.cpu_count() or 1)
    store = DataStore(settings.vector_store_dir, settings.vector_index, initial_weights(*settings.fusion_weights))
    store.open(registry.dims())
    from flashfit_server.replica import replica_for
    from flashfit_server.sharedlog import SyncError

    replica = replica_for(settings, store)  # with CATALOG_SYNC_URL, every batch is a commit of the shared log
    try:
        if replica is not None:
            replica.sync_once()
    except SyncError as exc:
        print(f"error: catalogue sync: {exc}", file=sys.stderr)
        return EXIT_FAILED
    add_items = store.add_items if replica is None else replica.add_items
    tags = [t.strip() for t in (args.tags or "").split(",") if t.strip()]
    started, added, skipped = time.perf_counter(), 0, 0
    for first in range(0, len(files), batch_size):
        decoded = []
        for path in files[first : first + batch_size]:
            try:
                decoded.append((path, decode_image(path.read_bytes(), settings.max_image_bytes, settings.max_image_pixels)))
            except ApiError as exc:
                print(f"skip {path}: {exc.message}", file=sys.stderr)
                skipped += 1
        if not decoded:
            continue
        embedded = embed_catalogue_sync(registry, [d.image for _, d in decoded])
        new_items = [
            NewItem(
                image_data=d.data, image_extension=d.extension, vectors=e.vectors, name=path.stem,
                caption=e.caption, category=args.category, tags=tags, user_id=args.user_id,
            )
            for (path, d), e in zip(decoded, embedded, strict=True)
        ]
        added += len(add_items(new_items))
        print(f"ingested {added}/{len(files)}", file=sys.stderr)
    seconds = time.perf_counter() - started
    print(f"ingested {added} items, skipped {skipped}, in {seconds:.1f}s ({added / max(seconds, 1e-9):.1f} items/s)")
    registry.queue.close()
    return EXIT_OK if added else EXIT_FAILED


# --- catalog publish ------------------------------------------------------------------------------


def cmd_catalog_publish(args: argparse.Namespace) -> int:
    """Seed an empty shared log with an existing data folder (flashfit_server/publish.py)."""
    from flashfit_contract.datafolder import DataFolderError, read_manifest
    from flashfit_server.datastore import DataStore, StoreError
    from flashfit_server.publish import FolderProblem, PublishRefused, publish
    from flashfit_server.sharedlog import LogUnreachable, SharedLog, SyncError, SyncTarget, parse_sync_url

    url = args.sync_url or os.environ.get("CATALOG_SYNC_URL", "")
    folder = Path(args.data_dir or os.environ.get("VECTOR_STORE_DIR", "data"))
    try:
        parse_sync_url(url)
    except ValueError as exc:
        print(f"error: --sync-url: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    endpoint = args.endpoint or os.environ.get("CATALOG_SYNC_ENDPOINT") or None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        print(f"error: --endpoint must be an http(s):// URL, got {endpoint!r:.80}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        manifest = read_manifest(folder) if folder.is_dir() else None
        if manifest is None:
            print(f"error: --data-dir: {folder} holds no data folder (no manifest.json; a folder of the previous "
                  "format is migrated by starting `flashfit-server serve` on it once)", file=sys.stderr)
            return EXIT_CONFIG
        store = DataStore(folder, compact_in_background=False)
        store.open(manifest.dims, background=False)
    except (DataFolderError, StoreError, OSError) as exc:
        print(f"error: --data-dir: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    shared = SharedLog(SyncTarget(url, endpoint, args.region or os.environ.get("CATALOG_SYNC_REGION") or None))
    try:
        shared.client  # noqa: B018 - made now, so a malformed endpoint is named here
    except ValueError as exc:
        store.close()
        print(f"error: --endpoint: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        done = publish(store, shared, progress=lambda line: print(line, file=sys.stderr))
    except PublishRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except FolderProblem as exc:
        print(f"error: --data-dir: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LogUnreachable as exc:
        print(f"error: {exc} (nothing was marked; run the command again once the bucket answers)", file=sys.stderr)
        return EXIT_FAILED
    except SyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    if done.already:
        print(f"{folder} already follows {shared.url} ({done.items} items): nothing to do")
    elif done.resumed:
        print(f"log record 1 of {shared.url} is this folder's own import ({done.items} items): the folder now "
              "follows the log")
    else:
        print(f"published {done.items} items of {folder} as log record 1 of {shared.url} ({done.parts} parts); "
              "start every node with CATALOG_SYNC_URL set to it")
    return EXIT_OK


# --- bench-store, clear-cache ----------------------------------------------------------------------


def cmd_bench_store(args: argparse.Namespace) -> int:
    from flashfit_contract.datafolder import DataFolderError, read_manifest
    from flashfit_server.datastore import STORE_NAMES, DataStore, StoreError
    from flashfit_server.storebench import time_store
    from flashfit_server.vector_store import configure_faiss

    settings = _settings()
    configure_faiss(args.threads or (os.cpu_count() or 1))
    try:
        manifest = read_manifest(settings.vector_store_dir)
        if manifest is None:
            print(f"no store in {settings.vector_store_dir}", file=sys.stderr)
            return EXIT_FAILED
        store = DataStore(settings.vector_store_dir, settings.vector_index, compact_in_background=False)
        store.open(manifest.dims, background=False)
    except (DataFolderError, StoreError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    measured = 0
    with store.read() as state:
        for name in STORE_NAMES:
            if len(state.stores[name]) == 0:
                print(f"{name}: empty")
                continue
            print(time_store(state.stores[name], queries=args.queries, k=args.k).line())  # type: ignore[arg-type]
            measured += 1
    return EXIT_OK if measured else EXIT_FAILED


def cmd_clear_cache(args: argparse.Namespace) -> int:
    """Delete what can be regenerated: temp files, segment files no manifest names and index
    files no store json names (left by interrupted writes), stale multiprocess metric files, and
    (with --models) the model checkpoints."""
    from flashfit_server.atomic import file_lock, read_json
    from flashfit_contract.datafolder import DataFolderError, read_manifest
    from flashfit_server.datastore import STORE_NAMES

    settings = _settings()
    data = settings.vector_store_dir
    removed = 0
    if data.is_dir():
        # No writer is mid-transaction and no compaction is writing while we look.
        with file_lock(data / ".compact.lock"), file_lock(data / ".lock"):
            referenced = set()
            for name in STORE_NAMES:
                if (data / f"{name}.json").exists():
                    referenced.add(read_json(data / f"{name}.json")["index_file"])
            debris = [*data.glob(".*.tmp"), *data.glob("images/.*.tmp"), *data.glob("segments/.*.tmp")]
            debris += [p for p in data.glob("*.index") if p.name not in referenced]
            try:
                manifest = read_manifest(data)
            except DataFolderError as exc:
                print(f"error: {exc}; segments left as they are", file=sys.stderr)
                manifest = None
            if manifest is not None:
                live = {e.file for e in manifest.entries()}
                debris += [p for p in data.glob("segments/*.seg") if f"segments/{p.name}" not in live]
            for path in debris:
                path.unlink(missing_ok=True)
                print(f"removed {path}")
                removed += 1
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        removed += _clear_metrics_dir(Path(metrics_dir))
    if args.models and settings.model_cache_dir.is_dir():
        shutil.rmtree(settings.model_cache_dir)
        print(f"removed {settings.model_cache_dir}")
        removed += 1
    print(f"cleared {removed} entries")
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashfit-server", description="The FlashFit recommendation server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server (uvicorn)")
    serve.add_argument("--host", default="0.0.0.0")  # noqa: S104  (a container's server listens on all interfaces)
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=0, help="worker processes (default: WORKERS or 1)")
    serve.set_defaults(func=cmd_serve)

    probe = commands.add_parser("probe", help="exit 0 if URL answers 200 (container HEALTHCHECK)")
    probe.add_argument("--url", default=DEFAULT_PROBE_URL)
    probe.add_argument("--timeout", type=float, default=DEFAULT_PROBE_TIMEOUT)
    probe.add_argument("--body", action="store_true", help="print the answer's body (at most 64 kB) after the status")
    probe.set_defaults(func=cmd_probe)

    token = commands.add_parser("token", help="mint a bearer token from JWT_SECRET_KEY")
    token.add_argument("--subject", default="ops")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(func=cmd_token)

    models = commands.add_parser("models", help="make or download model checkpoints")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    tiny = model_commands.add_parser("make-tiny", help="write small deterministic checkpoints into DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--size", choices=["tiny", "full"], default="tiny",
                      help="full: the real architectures with random weights (benchmarks)")
    tiny.set_defaults(func=cmd_make_tiny)
    pull = model_commands.add_parser("pull", help="download the real checkpoints into DIR (needs the hub)")
    pull.add_argument("dir")
    pull.set_defaults(func=cmd_pull)

    ingest = commands.add_parser("ingest", help="add every image under FOLDER, in batches")
    ingest.add_argument("folder")
    ingest.add_argument("--category")
    ingest.add_argument("--user-id")
    ingest.add_argument("--tags", help="comma separated")
    ingest.add_argument("--batch-size", type=int, default=0, help="default: MAX_BATCH_SIZE")
    ingest.set_defaults(func=cmd_ingest)

    catalog = commands.add_parser("catalog", help="the shared catalogue log (CATALOG_SYNC_URL)")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    publish = catalog_commands.add_parser(
        "publish", help="seed an EMPTY shared log with an existing data folder (once, with its server stopped)")
    publish.add_argument("--data-dir", help="the data folder (default: VECTOR_STORE_DIR)")
    publish.add_argument("--sync-url", help="s3://bucket/prefix (default: CATALOG_SYNC_URL)")
    publish.add_argument("--endpoint", help="S3-compatible endpoint URL (default: CATALOG_SYNC_ENDPOINT)")
    publish.add_argument("--region", help="default: CATALOG_SYNC_REGION or us-east-1")
    publish.set_defaults(func=cmd_catalog_publish)

    bench = commands.add_parser("bench-store", help="search latency p50/p95 and QPS of each store")
    bench.add_argument("--queries", type=int, default=200)
    bench.add_argument("--k", type=int, default=10)
    bench.add_argument("--threads", type=int, default=0)
    bench.set_defaults(func=cmd_bench_store)

    clear = commands.add_parser("clear-cache", help="delete temp/debris files and stale metric files")
    clear.add_argument("--models", action="store_true", help="also delete MODEL_CACHE_DIR")
    clear.set_defaults(func=cmd_clear_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
