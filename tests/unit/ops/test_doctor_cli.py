"""`flashfit doctor` on the command line: --list-checks, --check, --json, exit codes, light imports."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashfit_ops.cli import app
from flashfit_ops.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def test_list_checks(runner: CliRunner):
    result = runner.invoke(app, ["doctor", "--list-checks"])
    assert result.exit_code == EXIT_OK
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names[:3] == ["config", "docker", "containers"] and "stores" in names
    document = json.loads(runner.invoke(app, ["doctor", "--list-checks", "--json"]).stdout)
    assert {"check", "description", "timeout_s"} == set(document[0])


def test_unknown_check_is_a_usage_error(runner: CliRunner, example_config: Path):
    result = runner.invoke(app, ["doctor", "-c", str(example_config), "--check", "dockr"])
    assert result.exit_code == EXIT_USAGE
    assert "unknown check: dockr" in result.output and "--list-checks" in result.output


def test_invalid_config_is_a_usage_error(runner: CliRunner, tmp_path: Path):
    path = tmp_path / "flashfit.yml"
    path.write_text("deploy: {strategy: fast}\n")
    result = runner.invoke(app, ["doctor", "-c", str(path)])
    assert result.exit_code == EXIT_USAGE
    assert "deploy.strategy" in result.output
    missing = runner.invoke(app, ["doctor", "-c", str(tmp_path / "nope.yml")])
    assert missing.exit_code == EXIT_USAGE


def test_json_output_and_exit_code_zero_with_warnings(runner: CliRunner, tmp_path: Path):
    path = tmp_path / "flashfit.yml"
    path.write_text("project: clitest\n")
    result = runner.invoke(app, ["doctor", "-c", str(path), "--json", "--check", "lock", "--check", "backup",
                                 "--check", "tls"])
    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert [d["check"] for d in document] == ["tls", "lock", "backup"]
    for entry in document:
        assert set(entry) == {"check", "status", "summary", "hint", "details", "duration_ms"}
    assert {d["check"]: d["status"] for d in document} == {"tls": "ok", "lock": "ok", "backup": "warning"}


def test_a_failure_exits_1_with_a_mark_and_a_hint_on_the_line(runner: CliRunner, tmp_path: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x.example.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=10)).not_valid_after(now - timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    path = tmp_path / "flashfit.yml"
    path.write_text("tls: {enabled: true, domains: [x.example.com], certificate: c.pem, key: k.pem}\n"
                    "ports: {https: 1}\n")
    result = runner.invoke(app, ["doctor", "-c", str(path), "--check", "tls", "-v"])
    assert result.exit_code == EXIT_FAILED
    line = next(line for line in result.stdout.splitlines() if line.startswith("✗ tls"))
    assert "expired" in line and "fix:" in line and "renew" in line
    assert "not_after:" in result.stdout  # -v details
    assert result.stdout.splitlines()[-1].startswith("✗ 1 checks")


def test_the_doctor_command_imports_no_docker_or_httpx_until_it_runs():
    code = ("import sys; from flashfit_ops.cli import app; import flashfit_ops.cli.doctor_cmd; "
            "bad = [m for m in ('docker', 'httpx', 'cryptography', 'faiss') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
