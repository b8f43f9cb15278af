"""A real multi-node Swarm with a real registry, on this one machine, for tests and benchmarks.

Nodes are Docker-in-Docker containers on the host engine, built from the project's Debian base
(see /work/shared/MULTINODE.md for what was verified: the capabilities that replace
`--privileged`, overlay2 nested on a named volume, Debian's `docker-registry`). Each cluster has
its own name prefix, label and subnet with fixed IPs; every wait is bounded; `down()` removes
everything by name and then, as a backstop, by label. It never touches the host engine's own
swarm state: the swarm lives inside the nodes.

The registry requires a user and password (htpasswd, bcrypt; made per cluster) unless
`registry_auth=False`, so pushes and pulls on every node go through real credentials. It is
published on the host's loopback (127.0.0.0/8 is an insecure registry by default,
so the host engine pushes without any daemon change) and each node forwards the same
127.0.0.1:PORT to it, so one image reference, digest included, means the same thing on the host
and on every node.

  python -m tests.integration.ops.cluster up [--nodes 3]    # prints DOCKER_HOST, registry, ports
  python -m tests.integration.ops.cluster down PREFIX
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import secrets
import subprocess
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
FAKE_APP = HERE.parent / "fake_backend" / "app.py"
LABEL = "io.flashfit.test-cluster"
NODE_REPO = "flashfit-cluster/node"
REGISTRY_REPO = "flashfit-cluster/registry"
APP_REPO = "flashfit-cluster/app"
BASE_IMAGE = "flashfit/debian-python:bookworm"
SHARED_ROOT = Path("/var/tmp")
# What replaces --privileged here (the host's bounding set lacks CAP_SYS_RESOURCE).
NODE_SECURITY = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
]  # fmt: skip


class ClusterError(RuntimeError):
    pass


def docker(*args: str, check: bool = True, timeout: float = 120, input: bytes | None = None) -> str:
    """The host engine's CLI (never a node's: DOCKER_HOST is not inherited)."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    done = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, env=env, input=input)
    if check and done.returncode != 0:
        raise ClusterError(f"docker {' '.join(args[:3])} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode().strip()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # the thing waited for is not up yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _image_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _has_image(reference: str) -> bool:
    return bool(docker("image", "ls", "-q", reference))


def _build(reference: str, files: dict[str, bytes], timeout: float = 900) -> str:
    """Build from an in-memory context, once: the tag carries a hash of every file in it."""
    if _has_image(reference):
        return reference
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    docker("build", "-q", "-t", reference, "-", input=buffer.getvalue(), timeout=timeout)
    return reference


def node_image() -> str:
    files = [HERE / "Dockerfile.node", HERE / "node-entrypoint.sh"]
    return _build(f"{NODE_REPO}:{_image_digest(*files)}", {
        "Dockerfile": files[0].read_bytes(), "node-entrypoint.sh": files[1].read_bytes()})  # fmt: skip


def registry_image() -> str:
    files = [HERE / "Dockerfile.registry", HERE / "registry.yml"]
    return _build(f"{REGISTRY_REPO}:{_image_digest(*files)}", {
        "Dockerfile": files[0].read_bytes(), "registry.yml": files[1].read_bytes()})  # fmt: skip


APP_DOCKERFILE = b"""FROM flashfit/debian-python:bookworm
COPY app.py /app/app.py
COPY probe /usr/local/bin/flashfit-server
EXPOSE 8080
CMD ["python3", "-u", "/app/app.py"]
"""
# The stack's healthcheck runs `flashfit-server probe --url URL`: the same contract, in 6 lines.
APP_PROBE = b"""#!/usr/bin/env python3
import sys, urllib.request
url = sys.argv[sys.argv.index("--url") + 1]
try:
    sys.exit(0 if urllib.request.urlopen(url, timeout=3).status == 200 else 1)
except Exception:
    sys.exit(1)
"""


def app_image() -> str:
    """A small backend (the tests' fake server plus the probe its healthcheck calls, ~125 MB on
    the shared base) so three nodes pull in seconds; the real server image works the same way."""
    digest = hashlib.sha256(APP_DOCKERFILE + APP_PROBE + FAKE_APP.read_bytes()).hexdigest()[:12]
    return _build(f"{APP_REPO}:{digest}", {"Dockerfile": APP_DOCKERFILE, "probe": APP_PROBE, "app.py": FAKE_APP.read_bytes()})


@dataclass
class Node:
    name: str
    ip: str
    manager: bool


@dataclass
class Cluster:
    prefix: str
    network: str
    subnet: str
    nodes: list[Node]
    registry: str  # 127.0.0.1:PORT, the same on the host and on every node
    docker_host: str  # the manager's engine, as tcp://127.0.0.1:PORT
    http_port: int  # the manager's port published on the host's loopback (the proxy's)
    shared_dir: Path  # mounted at the same path on every node (models, data: "on every node")
    extra_ports: list[int] = field(default_factory=list)
    registry_user: str | None = None
    registry_password: str | None = field(default=None, repr=False)

    @property
    def registry_auth(self) -> dict[str, str] | None:
        if not self.registry_user:
            return None
        return {"username": self.registry_user, "password": self.registry_password or ""}

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    def client(self) -> Any:
        import docker as docker_sdk

        return docker_sdk.DockerClient(base_url=self.docker_host, version="auto", timeout=120)

    def node_docker(self, node: Node, *args: str, timeout: float = 120, check: bool = True) -> str:
        """The docker CLI inside a node, against that node's own engine."""
        return docker("exec", node.name, "docker", *args, timeout=timeout, check=check)

    def push(self, source: str, repository: str, tag: str) -> str:
        """Tag a host image into the cluster registry and push it (credentials passed per call,
        never stored in the host's docker config); returns repo:tag@sha256:..."""
        import docker as docker_sdk

        target = f"{self.registry}/{repository}"
        docker("tag", source, f"{target}:{tag}")
        host = docker_sdk.DockerClient(base_url="unix:///var/run/docker.sock", version="auto", timeout=600)
        digest = None
        for event in host.images.push(target, tag, stream=True, decode=True, auth_config=self.registry_auth):
            if event.get("error"):
                raise ClusterError(f"push of {target}:{tag} failed: {event['error']}")
            digest = (event.get("aux") or {}).get("Digest") or digest
        if not digest:
            raise ClusterError(f"push of {target}:{tag} reported no digest")
        return f"{target}:{tag}@{digest}"

    def stop_node(self, node: Node) -> None:
        docker("stop", "-t", "0", node.name)

    def start_node(self, node: Node) -> None:
        docker("start", node.name)

    def down(self) -> None:
        remove(self.prefix)


def remove(prefix: str) -> None:
    """Everything of one cluster: by name first, then anything still carrying its label."""
    label = f"{LABEL}={prefix}"
    names = docker("ps", "-aq", "--filter", f"label={label}", check=False).split()
    if names:
        docker("rm", "-f", "-v", *names, check=False, timeout=120)
    for volume in docker("volume", "ls", "-q", "--filter", f"label={label}", check=False).split():
        docker("volume", "rm", "-f", volume, check=False)
    for network in docker("network", "ls", "-q", "--filter", f"label={label}", check=False).split():
        docker("network", "rm", network, check=False)
    for leftover in docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference=127.0.0.1:*/{prefix}/*", check=False).split():
        docker("rmi", "--no-prune", leftover, check=False)
    import shutil

    for folder in SHARED_ROOT.glob(f"{prefix}-*"):
        shutil.rmtree(folder, ignore_errors=True)


def _free_subnet() -> ipaddress.IPv4Network:
    taken = []
    for network_id in docker("network", "ls", "-q").split():
        for subnet in docker("network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network_id, check=False).split():
            try:
                taken.append(ipaddress.ip_network(subnet, strict=False))
            except ValueError:
                pass
    for _ in range(50):
        candidate = ipaddress.ip_network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise ClusterError("no free /24 in 10.200.0.0-10.249.255.0")


def _published(container: str, port: int) -> int:
    text = docker("port", container, f"{port}/tcp")
    return int(text.splitlines()[0].rsplit(":", 1)[1])


def _free_host_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _htpasswd(user: str, password: str) -> str:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's bcrypt ($2b$), which the registry's htpasswd auth accepts

    # The lowest cost (2^4): the registry checks the hash on every request, and at the default
    # cost a loaded 2-core host spends seconds per request, enough to time pushes out.
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"


def up(nodes: int = 3, *, shared_root: Path | None = None, extra_ports: int = 0, timeout: float = 120,
       registry_auth: bool = True, in_memory: bool = False) -> Cluster:  # fmt: skip
    """Bring up `nodes` nodes (the first the only manager) and a registry. Torn down on failure.

    in_memory: each node's /var/lib/docker is a tmpfs instead of a named volume on the host's
    disk. For clusters that run a big image: extracting it three times, and removing it again,
    then costs memory bandwidth instead of disk writes (about 1.5 GB of RAM per node for the real
    server image)."""
    import tempfile

    if nodes not in (1, 2, 3, 4, 5):
        raise ClusterError("1 to 5 nodes")
    node_ref, registry_ref = node_image(), registry_image()
    prefix = f"ffc{secrets.token_hex(3)}"
    label = f"{LABEL}={prefix}"
    # Not under /tmp: each node mounts a fresh tmpfs there, which would hide the bind mount.
    shared = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=shared_root or SHARED_ROOT))
    shared.chmod(0o755)
    subnet = _free_subnet()
    hosts = list(subnet.hosts())
    network = f"{prefix}-net"
    http_port = _free_host_port()
    ports = [_free_host_port() for _ in range(extra_ports)]
    cluster = Cluster(prefix, network, str(subnet), [], "", "", http_port, shared, ports)
    try:
        docker("network", "create", "--label", label, "--subnet", str(subnet), network)
        auth: list[str] = []
        if registry_auth:
            cluster.registry_user, cluster.registry_password = "ci", secrets.token_urlsafe(18)
            folder = shared / ".registry-auth"
            folder.mkdir()
            (folder / "htpasswd").write_text(_htpasswd(cluster.registry_user, cluster.registry_password))
            auth = ["-v", f"{folder}:/auth:ro", "-e", "REGISTRY_AUTH=htpasswd", "-e", "REGISTRY_AUTH_HTPASSWD_REALM=cluster",
                    "-e", "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd"]  # fmt: skip
        docker("run", "-d", "--name", f"{prefix}-registry", "--label", label, "--network", network,
               "--ip", str(hosts[1]), "--network-alias", "registry", "-p", "127.0.0.1::5000", *auth, registry_ref)  # fmt: skip
        cluster.registry = f"127.0.0.1:{_published(f'{prefix}-registry', 5000)}"
        registry_port = cluster.registry.rsplit(":", 1)[1]
        storage = (["--tmpfs", "/var/lib/docker:exec,size=8g"] if in_memory
                   else ["--mount", f"type=volume,dst=/var/lib/docker,volume-label={label}"])  # fmt: skip
        for index in range(nodes):
            node = Node(f"{prefix}-node{index + 1}", str(hosts[10 + index]), index == 0)
            publish = ["-p", "127.0.0.1::2375", "-p", f"127.0.0.1:{http_port}:{http_port}"] if node.manager else []
            for port in ports if node.manager else []:
                publish += ["-p", f"127.0.0.1:{port}:{port}"]
            docker("run", "-d", "--name", node.name, "--hostname", node.name, "--label", label,
                   "--network", network, "--ip", node.ip, *NODE_SECURITY, *publish,
                   "-e", f"REGISTRY_LOOPBACK_PORT={registry_port}", "-e", f"REGISTRY_ADDRESS={hosts[1]}:5000",
                   "-v", f"{shared}:{shared}", *storage, node_ref)  # fmt: skip
            cluster.nodes.append(node)
        cluster.docker_host = f"tcp://127.0.0.1:{_published(cluster.manager.name, 2375)}"
        for node in cluster.nodes:
            wait_for(lambda n=node: cluster.node_docker(n, "info", "--format", "{{.ServerVersion}}", timeout=10), timeout, f"{node.name}'s engine")
        cluster.node_docker(cluster.manager, "swarm", "init", "--advertise-addr", cluster.manager.ip)
        token = cluster.node_docker(cluster.manager, "swarm", "join-token", "-q", "worker")
        for node in cluster.nodes[1:]:
            cluster.node_docker(node, "swarm", "join", "--token", token, f"{cluster.manager.ip}:2377")
        wait_for(lambda: ready_nodes(cluster) == nodes, timeout, f"{nodes} Ready swarm nodes")
        status = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{cluster.registry}/v2/"]
        wait_for(lambda: docker("exec", cluster.manager.name, *status, timeout=10, check=False) in ("200", "401"),
                 timeout, "the registry from the manager")  # fmt: skip
        return cluster
    except BaseException:
        cluster.down()
        raise


def ready_nodes(cluster: Cluster) -> int:
    listing = cluster.node_docker(cluster.manager, "node", "ls", "--format", "{{.Status}}", timeout=10, check=False)
    return listing.split().count("Ready")


@contextmanager
def running(nodes: int = 3, **kwargs: Any) -> Iterator[Cluster]:
    cluster = up(nodes, **kwargs)
    try:
        yield cluster
    finally:
        cluster.down()
