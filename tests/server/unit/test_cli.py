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
