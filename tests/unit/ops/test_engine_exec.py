"""Exec output read whole (flashfit_ops/engine/execs.py), through the real Docker SDK talking to a
fake engine on a Unix socket.

The fake answers an exec's start the way dockerd does (`101 UPGRADED` when asked to upgrade, else
`200 OK`, then the multiplexed frames until it closes), and sends the head and ALL of the output
in one write: what a loaded host does when the command finished before the client read the head.
The SDK's exec_run lost those bytes (its HTTP reader buffers them, its frame reader reads the raw
socket under it), which is how a CI run saw `nginx -T` exit 0 with no upstream block."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from flashfit_ops.config.load import resolve
from flashfit_ops.doctor.checks import http, nginx
from flashfit_ops.doctor.context import DoctorContext, Settings
from flashfit_ops.doctor.result import FAILURE, OK
from flashfit_ops.engine.execs import ExecOutput, demultiplex, run
from flashfit_ops.execute.backend import DockerBackend
from flashfit_ops.render import render_nginx

API = "1.41"
PROXY_ARGS = ["-c", "/etc/flashfit/nginx.conf", "-g", "daemon off;"]


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Containers ({id: inspect attrs}) and, per command (its first two words), what an exec of it
    prints ([(stream, bytes)]) and its exit code."""

    daemon_threads = True

    def __init__(self, path: str, containers: dict[str, dict], execs: dict[tuple[str, ...], tuple[list, int]]):
        self.containers = containers
        self.execs = execs
        self.created: dict[str, tuple[str, list[str]]] = {}
        super().__init__(path, Handler)


class Handler(socketserver.StreamRequestHandler):
    server: FakeEngine

    def handle(self) -> None:
        while True:
            request_line = self.rfile.readline().decode()
            if not request_line:
                return
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            while (line := self.rfile.readline().decode().strip()):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            body = self.rfile.read(int(headers.get("content-length", 0) or 0))
            path = re.sub(rf"^/v{re.escape(API)}", "", target.split("?", 1)[0])
            if not self.answer(method, path, headers, body):
                return  # the connection was hijacked and closed

    def reply(self, status: int, document: Any) -> None:
        data = json.dumps(document).encode()
        reason = {200: "OK", 201: "Created", 404: "Not Found"}[status]
        self.wfile.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bool:
        engine = self.server
        if method == "GET" and path == "/containers/json":
            self.reply(200, [{"Id": cid, "Names": [attrs["Name"]]} for cid, attrs in engine.containers.items()])
        elif method == "GET" and (m := re.fullmatch(r"/containers/([^/]+)/json", path)):
            found = [a for cid, a in engine.containers.items() if m.group(1) in (cid, a["Name"].lstrip("/"))]
            self.reply(200, found[0]) if found else self.reply(404, {"message": "No such container"})
        elif method == "POST" and (m := re.fullmatch(r"/containers/([^/]+)/exec", path)):
            exec_id = f"exec{len(engine.created)}"
            engine.created[exec_id] = (m.group(1), json.loads(body)["Cmd"])
            self.reply(201, {"Id": exec_id})
        elif method == "POST" and (m := re.fullmatch(r"/exec/([^/]+)/start", path)):
            frames, _ = engine.execs[tuple(engine.created[m.group(1)][1][:2])]
            if "upgrade" in headers:
                head = ("HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                        "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
            else:
                head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
            # The head and every frame in one write, then the engine hangs up.
            self.wfile.write(head.encode() + b"".join(frame(stream, data) for stream, data in frames))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return False
        elif method == "GET" and (m := re.fullmatch(r"/exec/([^/]+)/json", path)):
            _, code = engine.execs[tuple(engine.created[m.group(1)][1][:2])]
            self.reply(200, {"ID": m.group(1), "Running": False, "ExitCode": code})
        else:
            self.reply(404, {"message": f"the fake engine has no {method} {path}"})
        return True


def container_attrs(cid: str, name: str, role: str, status: str, **extra: Any) -> dict:
    return {"Id": cid, "Name": f"/{name}", "State": {"Status": status, "ExitCode": 0 if status == "running" else 143},
            "Config": {"Labels": {"io.flashfit.project": "demo", "io.flashfit.role": role, "io.flashfit.color": "blue"},
                       "Hostname": cid[:12]},
            "NetworkSettings": {"Networks": {}}, "RestartCount": 0, **extra}


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ffexec-", dir="/tmp"))  # short: a Unix socket path has 107 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path)


def start_engine(folder: Path, containers: dict[str, dict], execs: dict) -> tuple[Any, FakeEngine]:
    import docker

    engine = FakeEngine(str(folder / "engine.sock"), containers, execs)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    return docker.DockerClient(base_url=f"unix://{folder / 'engine.sock'}", version=API, timeout=10), engine


def nginx_dump(conf: str) -> list[tuple[int, bytes]]:
    """What `nginx -T` prints: the verdict on stderr, then every file it loaded on stdout."""
    mime = "types {\n" + "".join(f"    application/x-flashfit-{n:04d}    ff{n};\n" for n in range(120)) + "}\n"
    return [(2, b"nginx: the configuration file /etc/flashfit/nginx.conf syntax is ok\n"
                b"nginx: configuration file /etc/flashfit/nginx.conf test is successful\n"),
            (1, f"# configuration file /etc/flashfit/nginx.conf:\n{conf}\n".encode()),
            (1, f"# configuration file /etc/nginx/mime.types:\n{mime}\n".encode())]


def deployment(folder: Path) -> tuple[Any, dict, dict[str, dict]]:
    """A project whose one backend was stopped: the proxy runs, its only slot links to the backend."""
    cfg = resolve({"project": "demo", "tls": {"enabled": False}}, environ={})
    cfg._base_dir = folder
    (folder / ".flashfit" / "proxy").mkdir(parents=True)
    (folder / ".flashfit" / "sockets").mkdir()
    conf = render_nginx(cfg, ["unix:/run/flashfit/slot-1.sock"], keepalive=False, standby=["unix:/run/flashfit/slot-standby-1.sock"])
    (folder / ".flashfit" / "proxy" / "nginx.conf").write_text(conf)
    backend = "demo-backend-blue-1-a1"
    for link in ("slot-1.sock", "slot-standby-1.sock"):
        os.symlink(f"{backend}.sock", folder / ".flashfit" / "sockets" / link)
    containers = {
        "b" * 64: container_attrs("b" * 64, backend, "backend", "exited"),
        "p" * 64: container_attrs("p" * 64, "demo-proxy", "proxy", "running", Path="nginx", Args=PROXY_ARGS),
    }
    return cfg, {("nginx", "-T"): (nginx_dump(conf), 0)}, containers


def test_the_upstream_check_names_the_stopped_backend_when_the_output_came_with_the_head(folder: Path):
    """The CI failure: a stopped backend, and `nginx -T` had printed everything before the client
    read the head. Doctor said "the proxy config has no upstream servers"."""
    cfg, execs, containers = deployment(folder)
    client, engine = start_engine(folder, containers, execs)
    try:
        ctx = DoctorContext(cfg, None, docker_factory=lambda: client, settings=Settings())
        result = nginx.upstream(ctx)
    finally:
        engine.shutdown()
    assert result.status == FAILURE
    assert "slot-1.sock points at demo-backend-blue-1-a1, which is exited" in result.summary, result.summary
    assert result.details["source"] == "nginx -T"


def test_the_nginx_config_check_keeps_nginx_t_s_error_message(folder: Path):
    """The same loss in the other proxy check: nginx -t's one-line verdict arrived with the head."""
    cfg, _, containers = deployment(folder)
    error = (b'nginx: [emerg] host not found in upstream "nosuchbackend:8080" in /etc/flashfit/nginx.conf:35\n'
             b"nginx: configuration file /etc/flashfit/nginx.conf test failed\n")
    client, engine = start_engine(folder, containers, {("nginx", "-t"): ([(2, error)], 1)})
    try:
        result = nginx.nginx_config(DoctorContext(cfg, None, docker_factory=lambda: client, settings=Settings()))
    finally:
        engine.shutdown()
    assert result.status == FAILURE
    assert result.summary == 'nginx -t fails: host not found in upstream "nosuchbackend:8080" in /etc/flashfit/nginx.conf:35'


def test_the_deploy_engine_s_exec_keeps_the_whole_output(folder: Path):
    """DockerBackend.exec (the deploy's `nginx -t` before a reload, whose words go into the error)."""
    _, _, containers = deployment(folder)
    text = b"".join(f"line {n}\n".encode() for n in range(2000))
    client, engine = start_engine(folder, containers, {("nginx", "-t"): ([(1, text[:7000]), (2, text[7000:])], 1)})
    try:
        code, output = DockerBackend(client).exec("demo-proxy", ["nginx", "-t", "-q"])
    finally:
        engine.shutdown()
    assert (code, output) == (1, text.decode())
    assert engine.created["exec0"] == ("demo-proxy", ["nginx", "-t", "-q"])


def test_the_store_bench_check_reads_every_timing_line(folder: Path):
    """The same loss in another check that parses what it ran: `bench-store`'s table."""
    cfg, _, containers = deployment(folder)
    containers["b" * 64]["State"] = {"Status": "running", "ExitCode": 0}
    table = "".join(f"{name:8} flat  n=120      p50=  0.050 ms  p95=  0.080 ms  qps(single)= 20000.0  qps(batch 64)= 1.0\n"
                    for name in ("clip", "blip", "fashion"))
    client, engine = start_engine(folder, containers, {("flashfit-server", "bench-store"): ([(1, table.encode())], 0)})
    try:
        result = http.store_bench(DoctorContext(cfg, None, docker_factory=lambda: client, settings=Settings()))
    finally:
        engine.shutdown()
    assert result.status == OK, result.summary
    assert set(result.details["stores"]) == {"clip", "blip", "fashion"}


# --- the frame reader and what the upstream check makes of output it cannot use -----------------


def test_demultiplex_splits_the_streams_and_says_when_the_body_is_cut():
    body = frame(1, b"out ") + frame(2, b"err ") + frame(1, b"more")
    whole = demultiplex(body)
    assert (whole.output, whole.stdout, whole.stderr, whole.problem) == (b"out err more", b"out more", b"err ", None)
    cut = demultiplex(body[:-2])
    assert cut.stdout == b"out mo" and cut.problem == "the output stream was cut short (2 of a 4-byte frame)"
    assert demultiplex(body[:3]).problem == "the output stream ends inside a frame header (byte 0 of 3)"
    assert "garbled" in (demultiplex(b"conf" * 4).problem or "")
    assert demultiplex(b"") == ExecOutput(None, b"", b"", b"", None)


class FakeApi:
    """The low-level API as execs.run uses it: the start answers `body`; the exec reads as running
    for `running` inspections."""

    def __init__(self, body: bytes, running: int = 0, code: int = 0):
        self.body, self.running, self.code = body, running, code
        self.inspections = 0

    def exec_create(self, container: str, cmd: list[str], **options: Any) -> dict:
        return {"Id": "e1"}

    def _url(self, template: str, *args: str) -> str:
        return template.format(*args)

    def _post_json(self, url: str, data: Any, **options: Any) -> Any:
        assert "headers" not in options  # no upgrade: the engine sends the output as the body
        return type("Response", (), {"content": self.body})()

    def _raise_for_status(self, response: Any) -> None:
        pass

    def exec_inspect(self, exec_id: str) -> dict:
        self.inspections += 1
        running = self.inspections <= self.running
        return {"Running": running, "ExitCode": None if running else self.code}


def test_run_waits_for_the_exit_code_the_engine_records_after_the_stream_closed():
    api = FakeApi(frame(1, b"ok"), running=2)
    client: Any = type("Client", (), {"api": api})()
    assert run(client, "demo-proxy", ["true"], sleep=lambda s: None) == ExecOutput(0, b"ok", b"ok", b"", None)
    assert api.inspections == 3
    never = FakeApi(frame(1, b"ok"), running=10_000)
    assert run(type("Client", (), {"api": never})(), "demo-proxy", ["true"], sleep=lambda s: None).exit_code is None


def proxy_ctx(folder: Path, result: ExecOutput, conf: str | None) -> DoctorContext:
    cfg = resolve({"project": "demo", "tls": {"enabled": False}}, environ={})
    cfg._base_dir = folder
    if conf is not None:
        (folder / ".flashfit" / "proxy").mkdir(parents=True)
        (folder / ".flashfit" / "proxy" / "nginx.conf").write_text(conf)
    proxy = type("Proxy", (), {"name": "demo-proxy", "id": "p1", "attrs": container_attrs(
        "p1", "demo-proxy", "proxy", "running", Path="nginx", Args=PROXY_ARGS)})()
    backend = type("Backend", (), {"name": "demo-backend-blue-1-a1", "id": "b1", "attrs": container_attrs(
        "b1", "demo-backend-blue-1-a1", "backend", "running")})()
    items = [proxy, backend]
    client = type("Client", (), {"containers": type("Containers", (), {"list": lambda self, **kw: list(items)})()})()
    ctx = DoctorContext(cfg, None, docker_factory=lambda: client, settings=Settings())
    ctx.exec = lambda container, argv: result  # type: ignore[method-assign]
    return ctx


@pytest.mark.parametrize("result, why", [
    (ExecOutput(0, b"conf", b"conf", b"", "the output stream was cut short (4 of a 9000-byte frame)"),
     "nginx -T: the output stream was cut short (4 of a 9000-byte frame)"),
    (ExecOutput(0, b"nginx: configuration file /etc/flashfit/nginx.conf test is successful\n", b"",
                b"nginx: configuration file /etc/flashfit/nginx.conf test is successful\n"),
     "nginx -T printed no configuration (70 bytes of output)"),
])
def test_output_nginx_t_cannot_vouch_for_is_never_read_as_no_upstream_servers(folder: Path, result: ExecOutput, why: str):
    """Unusable -T output: the file on disk answers and says why; with no file either, doctor says it
    could not read the proxy config, not that the config has no upstream servers."""
    cfg = resolve({"project": "demo", "tls": {"enabled": False}}, environ={})
    conf = render_nginx(cfg, ["unix:/run/flashfit/slot-1.sock"], keepalive=False)
    with_file = nginx.upstream(proxy_ctx(folder / "a", result, conf))
    assert with_file.details["source"].endswith("nginx.conf") and with_file.details["unread"] == [why]
    assert "no upstream servers" not in with_file.summary and "slot slot-1.sock" in with_file.summary
    without = nginx.upstream(proxy_ctx(folder / "b", result, None))
    assert without.status == FAILURE
    assert without.summary.startswith(f"could not read the proxy config: {why}; ")
    assert without.summary.endswith("nginx.conf is unreadable")
    assert "docker exec demo-proxy nginx -T" in without.hint


def test_a_whole_dump_without_upstream_servers_is_still_said_so(folder: Path):
    dump = b"# configuration file /etc/flashfit/nginx.conf:\nevents {}\nhttp { server { listen 80; } }\n"
    result = nginx.upstream(proxy_ctx(folder, ExecOutput(0, dump, dump, b""), None))
    assert result.status == FAILURE and result.summary == "the proxy config has no upstream servers"
