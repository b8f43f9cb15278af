from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from flashfit_server.auth import verify_token
from flashfit_server.cli import main


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from flashfit_server import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'transformers', 'faiss', 'fastapi', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_app_import_does_not_load_models() -> None:
    code = "import sys; import flashfit_server.main; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.fixture
def status_server() -> Iterator[tuple[str, list[int]]]:
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ready", status
    server.shutdown()


def test_probe_exit_codes(status_server: tuple[str, list[int]]) -> None:
    url, status = status_server
    assert main(["probe", "--url", url]) == 0
    status[0] = 503
    assert main(["probe", "--url", url]) == 1
    assert main(["probe", "--url", "http://127.0.0.1:9/ready", "--timeout", "0.5"]) == 1


def test_probe_as_a_process_imports_nothing_heavy(status_server: tuple[str, list[int]]) -> None:
    """The container HEALTHCHECK runs it every few seconds."""
    url, _ = status_server
    code = (
        "import sys; from flashfit_server import cli\n"
        f"code = cli.main(['probe', '--url', {url!r}])\n"
        "print(code, [m for m in ('torch', 'transformers', 'faiss', 'fastapi', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []", out


def test_the_executables_probe_takes_the_socket_only_path(status_server: tuple[str, list[int]]) -> None:
    """Docker runs the probe every second in every replica: the executable's path for it imports
    neither argparse nor urllib, and answers as the CLI's probe does."""
    url, status = status_server
    code = (
        "import sys; from flashfit_server import entry\n"
        f"sys.argv = ['flashfit-server', 'probe', '--url', {url!r}, '--timeout', '2']\n"
        "code = entry.main()\n"
        "print(code, [m for m in ('argparse', 'urllib.request', 'logging', 'flashfit_server.cli') if m in sys.modules])"
    )
    for answer, expected in ((200, "0 []"), (503, "1 []")):
        status[0] = answer
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert done.stdout.strip().splitlines()[-1] == expected, done.stdout
        assert done.stdout.startswith(f"probe {url}: {answer}")


def test_fast_probe_exit_codes_and_what_it_leaves_to_the_cli(status_server: tuple[str, list[int]], capsys) -> None:
    from flashfit_server.probe import fast_probe

    url, status = status_server
    assert fast_probe(["--url", url]) == 0
    assert fast_probe([f"--url={url}", "--timeout=1"]) == 0
    status[0] = 503
    assert fast_probe(["--url", url]) == 1
    assert fast_probe(["--url", "http://127.0.0.1:9/ready", "--timeout", "0.5"]) == 1
    assert "Connection refused" in capsys.readouterr().err
    for argv in (["--body"], ["--help"], ["--url", "https://127.0.0.1/ready"], ["--url", "http://[::1]:8080/"],
                 ["--url"], ["--timeout", "soon"], ["--timeout", "0"], ["--url", "http://host:port/"]):  # fmt: skip
        assert fast_probe(argv) is None, argv


def test_fast_probe_refuses_an_answer_that_is_not_http() -> None:
    import socket

    from flashfit_server.probe import status_of

    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        connection.recv(1024)
        connection.sendall(b"SSH-2.0-OpenSSH\r\n")
        connection.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ValueError, match="not an HTTP answer"):
        status_of("127.0.0.1", listener.getsockname()[1], "/ready", timeout=2)
    listener.close()


def test_token_is_signed_with_the_configured_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    secret = "s" * 40
    monkeypatch.setenv("JWT_SECRET_KEY", secret)
    assert main(["token", "--subject", "deployer", "--ttl", "120"]) == 0
    claims = verify_token(capsys.readouterr().out.strip(), secret)
    assert claims["sub"] == "deployer" and claims["exp"] - claims["iat"] == 120


def test_serve_refuses_production_without_a_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", "your-jwt-secret-key-here")
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "JWT_SECRET_KEY" in err and "your-jwt-secret-key-here" not in err


def test_bad_setting_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERS", "many")
    with pytest.raises(SystemExit) as info:
        main(["token"])
    assert info.value.code == 2


@pytest.mark.parametrize("ttl", ["0", "-5", "90000"])
def test_token_ttl_beyond_the_max_lifetime_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, ttl: str) -> None:
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 40)
    assert main(["token", "--ttl", ttl]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "JWT_MAX_LIFETIME" in captured.err
