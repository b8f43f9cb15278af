"""`flashfit doctor` against a real deployment: the real server image, the real nginx image, the
real deploy engine (flashfit_ops.execute.service.deploy). Each test breaks one thing for real,
asserts that doctor names the right check with the right status, and puts it back.

Everything created is recorded and removed in teardown (containers, network and volume by the
project's name and labels); the project name is unique per run and host ports are high.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flashfit_ops.doctor.api import run_doctor
from flashfit_ops.doctor.context import Settings
from flashfit_ops.doctor.result import FAILURE, OK, WARNING, CheckResult, exit_code
from tests.integration.ops.fake_backend.harness import real_server_image, require_image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
NGINX_IMAGE = "flashfit/nginx:bookworm"


def free_port_block(count: int, start: int = 19080) -> list[int]:
    """`count` consecutive-ish free high ports."""
    found = []
    port = start + secrets.randbelow(2000)
    while len(found) < count:
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
                found.append(port)
            except OSError:
                pass
        port += 1
    return found


def make_certificate(folder: Path, days: float) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor.example.com")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("doctor.example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "server.key").chmod(0o644)  # the proxy's nginx master reads it as root; fine for a test key


class DoctorStack:
    """A real deployment in a temp folder: tiny model checkpoints, a tmpfs data volume (so it can be
    filled), TLS with a self-signed certificate, and one backup. `close()` removes everything."""

    DATA_VOLUME_MB = 64

    def __init__(self, folder: Path):
        import docker

        self.client = docker.from_env(version="auto")
        self.folder = folder
        self.project = f"doc{secrets.token_hex(3)}"
        self.http_port, self.https_port, self.extra_port = free_port_block(3)
        self.volume_name = f"{self.project}_data"
        self.created_volumes: list[str] = []
        self.repository, self.tag = real_server_image().rsplit(":", 1)
        require_image(NGINX_IMAGE)

    @property
    def config_path(self) -> Path:
        return self.folder / "flashfit.yml"

    def write_config(self) -> None:
        config = {
            "project": self.project,
            "ports": {"http": self.http_port, "https": self.https_port, "prometheus": self.extra_port},
            "server": {"image": self.repository, "environment": {"ENVIRONMENT": "development"}},
            "resources": {"limits": {"memory": "2G", "cpus": 1}, "reservations": {"memory": "512M", "cpus": 0.5}},
            "volumes": {"models": "./models", "data": "data"},
            "services": {"nginx": {"image": NGINX_IMAGE}, "prometheus": {"enabled": True}, "grafana": {"enabled": False}},
            "tls": {"enabled": True, "domains": ["doctor.example.com"], "certificate": "tls/server.crt", "key": "tls/server.key"},
            "deploy": {"strategy": "blue-green", "deadline": "120s", "monitor_window": "2s"},
            "backup": {"target": "file://./backups"},
        }
        import yaml

        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def up(self) -> None:
        models = self.folder / "models"
        models.mkdir()
        subprocess.run([str(Path(sys.executable).parent / "flashfit-server"), "models", "make-tiny", str(models)],
                       check=True, capture_output=True, timeout=300)
        for path in [models, *models.rglob("*")]:
            os.chown(path, 1000, 1000)
        (self.folder / "tls").mkdir()
        make_certificate(self.folder / "tls", days=90)
        # The data volume is a small tmpfs, created before the deploy (which keeps an existing volume).
        self.client.volumes.create(
            self.volume_name, driver="local",
            driver_opts={"type": "tmpfs", "device": "tmpfs", "o": f"size={self.DATA_VOLUME_MB}m,uid=1000,gid=1000"},
            labels={"io.flashfit.project": self.project},
        )
        self.created_volumes.append(self.volume_name)
        self.write_config()
        from flashfit_ops.config import load_config
        from flashfit_ops.execute.service import deploy

        self.config = load_config(self.config_path)
        deploy(self.config, version=self.tag)

    def backend(self) -> Any:
        found = self.client.containers.list(
            ignore_removed=True, filters={"label": [f"io.flashfit.project={self.project}", "io.flashfit.role=backend"]})
        assert found, "no running backend"
        return found[0]

    def ingest(self, count: int = 3) -> None:
        """Add catalogue items through the server's own CLI inside the backend container, so the
        stores are saved in the server's format."""
        backend = self.backend()
        script = ("import os; from PIL import Image; os.makedirs('/tmp/imgs', exist_ok=True)\n"
                  f"for i in range({count}): Image.new('RGB', (32, 32), (40 * i, 90, 200)).save(f'/tmp/imgs/{{i}}.png')")
        result = backend.exec_run(["python", "-c", script])
        assert result.exit_code == 0, result.output
        result = backend.exec_run(["flashfit-server", "ingest", "/tmp/imgs", "--category", "tops"])
        assert result.exit_code == 0, result.output

    def backup(self) -> None:
        from flashfit_ops.backup.engine import create_backup
        from flashfit_ops.backup.store import open_store

        create_backup(self.config, open_store(self.config.backup.target, self.config), config_file=self.config_path)

    def data_dir(self) -> Path:
        return Path(self.client.volumes.get(self.volume_name).attrs["Mountpoint"])

    def doctor(self, *names: str) -> dict[str, CheckResult]:
        results, _wall = run_doctor(self.config_path, names=list(names) or None, settings=Settings(latency_requests=15))
        return {r.check: r for r in results}

    def close(self) -> None:
        label = f"io.flashfit.project={self.project}"
        for container in self.client.containers.list(all=True, ignore_removed=True, filters={"label": label}):
            container.remove(force=True)
        for network in self.client.networks.list(names=[f"{self.project}_net"]):
            network.remove()
        for name in self.created_volumes + [v.name for v in self.client.volumes.list(filters={"label": label})]:
            try:
                self.client.volumes.get(name).remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {name: r.status for name, r in results.items()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("doctor-stack")
    stack = DoctorStack(folder)
    try:
        stack.up()
        stack.ingest()
        stack.backup()
        yield stack
    finally:
        stack.close()


def test_a_healthy_deployment_is_all_ok(stack: DoctorStack):
    results = stack.doctor()
    assert statuses(results) == {name: OK for name in results}, {
        n: (r.summary, r.hint) for n, r in results.items() if r.status != OK}
    assert exit_code(results.values()) == 0
    assert results["stores"].details["rows"] == {"clip": 3, "blip": 3, "fashion": 3}
    assert results["upstream"].details["live_color"] == "blue"
    # nginx routes through replica slots; doctor names the container each slot links to
    assert f"slot-1 -> {stack.backend().name}" in results["upstream"].summary
    # read from `nginx -T` in the proxy, whole (engine/execs.py), not from the file on disk
    assert results["upstream"].details["source"] == "nginx -T" and "unread" not in results["upstream"].details
    assert results["ports"].details["ports"]["ports.http"]["state"] == "ours"


def test_a_port_the_config_needs_taken_by_another_process(stack: DoctorStack):
    holder = socket.socket()
    holder.bind(("0.0.0.0", stack.extra_port))
    holder.listen(1)
    try:
        result = stack.doctor("ports")["ports"]
    finally:
        holder.close()
    assert result.status == FAILURE
    assert f"port {stack.extra_port} (ports.prometheus) is taken by" in result.summary
    assert "ports.prometheus" in result.hint
    assert stack.doctor("ports")["ports"].status == OK


def test_a_full_data_volume(stack: DoctorStack):
    filler = stack.data_dir() / "filler.bin"
    try:
        free = shutil.disk_usage(stack.data_dir()).free
        with filler.open("wb") as handle:
            handle.write(b"\0" * (free - 1 * 1024 * 1024))  # leave 1 MiB of 64
        result = stack.doctor("disk")["disk"]
    finally:
        filler.unlink(missing_ok=True)
    assert result.status == FAILURE
    assert "volumes.data 9" in result.summary and "used" in result.summary
    assert result.hint
    assert stack.doctor("disk")["disk"].status == OK


def test_a_broken_upstream_in_the_proxy_config(stack: DoctorStack):
    conf = stack.folder / ".flashfit" / "proxy" / "nginx.conf"
    original = conf.read_text()
    import re

    broken = re.sub(r"server unix:\S+", "server nosuchbackend-doctor:8080", original, count=1)
    assert broken != original
    conf.write_text(broken)
    try:
        results = stack.doctor("nginx-config", "upstream", "proxy-health")
    finally:
        conf.write_text(original)
    assert results["nginx-config"].status == FAILURE
    assert 'host not found in upstream "nosuchbackend-doctor:8080"' in results["nginx-config"].summary
    assert results["upstream"].status == FAILURE
    assert "nosuchbackend-doctor:8080 is not a backend of this project" in results["upstream"].summary
    assert results["proxy-health"].status == OK  # nginx still serves its last good config
    assert statuses(stack.doctor("nginx-config", "upstream")) == {"nginx-config": OK, "upstream": OK}


def test_a_certificate_that_expires_in_three_days(stack: DoctorStack):
    tls_dir = stack.folder / "tls"
    saved = {name: (tls_dir / name).read_bytes() for name in ("server.crt", "server.key")}
    # The proxy bind-mounts these files: write in place so the mount sees them.
    make_certificate(stack.folder, days=3)
    for name in saved:
        (tls_dir / name).write_bytes((stack.folder / name).read_bytes())
    try:
        result = stack.doctor("tls")["tls"]
    finally:
        for name, data in saved.items():
            (tls_dir / name).write_bytes(data)
    assert result.status == WARNING
    assert "certificate expires in 2 days" in result.summary or "certificate expires in 3 days" in result.summary
    assert "renew" in result.hint
    # nginx has not reloaded: it still serves the 90-day certificate, and doctor says so.
    assert result.details["served_matches_file"] is False
    assert stack.doctor("tls")["tls"].status == OK


def test_a_stale_deploy_lock(stack: DoctorStack):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = stack.folder / ".flashfit" / "lock"
    lock.write_text(json.dumps({"who": "ci", "host": socket.gethostname(), "pid": dead.pid,
                                "since": "2025-01-01T00:00:00+00:00", "command": "flashfit deploy", "message": ""}))
    try:
        result = stack.doctor("lock")["lock"]
    finally:
        lock.unlink()
    assert result.status == WARNING
    assert "stale deploy lock" in result.summary and f"pid {dead.pid} is gone" in result.summary
    assert "flashfit lock release" in result.hint
    assert stack.doctor("lock")["lock"].status == OK


def test_index_metadata_that_disagrees_with_the_index(stack: DoctorStack):
    """The manifest (the vectors' commit point) and the catalogue disagree: a tombstone for an
    item the catalogue still lists (the generation is left alone, so the server does not apply it)."""
    manifest_path = stack.data_dir() / "manifest.json"
    original = manifest_path.read_bytes()
    manifest = json.loads(original)
    manifest["tombstones"].append([1, manifest["generation"]])
    manifest_path.write_text(json.dumps(manifest))
    try:
        result = stack.doctor("stores")["stores"]
    finally:
        manifest_path.write_bytes(original)
    assert result.status == FAILURE
    assert "clip: the manifest holds 2 live vectors but the catalogue lists 3 items" in result.summary
    assert "restore" in result.hint
    assert stack.doctor("stores")["stores"].status == OK


def test_the_cli_reports_json_and_exit_codes(stack: DoctorStack):
    command = [str(Path(sys.executable).parent / "flashfit"), "doctor", "-c", str(stack.config_path)]
    done = subprocess.run([*command, "--json", "--check", "docker", "--check", "lock"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert [d["check"] for d in document] == ["docker", "lock"]
    assert set(document[0]) == {"check", "status", "summary", "hint", "details", "duration_ms"}
    bad = subprocess.run([*command, "--check", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown check" in bad.stderr


def test_a_stopped_server_container(stack: DoctorStack):
    """Last: it breaks the stack for good (teardown removes it). The keeper, which would start
    the stopped backend again (see test_self_healing.py), is stopped first."""
    for keeper in stack.client.containers.list(filters={"label": f"io.flashfit.project={stack.project}", "name": "keeper"}):
        keeper.stop(timeout=5)
    backend = stack.backend()
    backend.stop(timeout=5)
    results = stack.doctor("containers", "proxy-health", "backend-health", "upstream")
    assert results["containers"].status == FAILURE
    assert f"{backend.name} is exited" in results["containers"].summary
    assert results["proxy-health"].status == FAILURE
    assert results["backend-health"].status == FAILURE
    assert results["upstream"].status == FAILURE and "which is exited" in results["upstream"].summary
    command = [str(Path(sys.executable).parent / "flashfit"), "doctor", "-c", str(stack.config_path), "--check", "containers"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "✗ containers" in done.stdout and "fix:" in done.stdout
