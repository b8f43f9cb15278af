"""A registry for multi-node deploys: push images, pin deploys to digests, list and prune tags.

Talks the registry HTTP API v2 (Distribution) with httpx: tags/list (paginated by Link headers),
manifests by tag (HEAD, for the digest) and by digest (DELETE, where the registry allows it), with
Basic auth or the token flow a `WWW-Authenticate: Bearer` challenge asks for. Pushing goes
through the Docker engine, which knows how to upload layers. Credentials come from the env file
or the environment (REGISTRY_USERNAME, REGISTRY_PASSWORD or REGISTRY_PASSWORD_FILE, the form a
Swarm secret takes): never from flashfit.yml, never printed.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import httpx

from flashfit_ops.config.model import Config
from flashfit_ops.engine.protocol import EngineClient
from flashfit_ops.errors import OperationFailed, Unavailable, UsageError
from flashfit_ops.images.tags import ImageTag, PruneResult, plan_prune
# The image's name belongs to the service's description (render names it too); re-exported here.
from flashfit_ops.service_spec import image_repository  # noqa: F401
from flashfit_ops.service_spec import registry_configured as is_configured
from flashfit_ops.service_spec import registry_repository as repository

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_NEXT = re.compile(r"<([^>]+)>;\s*rel=\"?next\"?")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
PUSH_TIMEOUT = 3600
LOGIN_ATTEMPTS = 4
LOGIN_BACKOFF = 0.5  # seconds before the 2nd try; doubled for each next one


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def credentials(config: Config, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """From the environment first, then the env file; a password file (Swarm secret) works too."""
    from flashfit_ops.config.secrets import env_file_path, parse_env_file

    environ = os.environ if environ is None else environ
    path = env_file_path(config)
    values = {**(parse_env_file(path) if path.is_file() else {}), **{k: v for k, v in environ.items() if v}}
    username, password = values.get("REGISTRY_USERNAME"), values.get("REGISTRY_PASSWORD")
    if not password and values.get("REGISTRY_PASSWORD_FILE"):
        try:
            password = Path(values["REGISTRY_PASSWORD_FILE"]).read_text().strip()
        except OSError as error:
            raise UsageError(f"REGISTRY_PASSWORD_FILE cannot be read: {error.strerror}") from None
    if bool(username) != bool(password):
        raise UsageError(
            "registry credentials are incomplete",
            hint="set both REGISTRY_USERNAME and REGISTRY_PASSWORD (or REGISTRY_PASSWORD_FILE) in the env file",
        )
    return Credentials(username, password) if username and password else None


def base_url(config: Config) -> str:
    server = config.registry.server or ""
    host = server.rsplit(":", 1)[0]
    plain = config.registry.insecure or host in ("localhost", "::1") or host.startswith("127.")
    return f"{'http' if plain else 'https'}://{server}"


# -- the HTTP API v2 ------------------------------------------------------------------------------
class RegistryClient:
    def __init__(self, url: str, repo: str, creds: Credentials | None, transport: httpx.BaseTransport | None = None):
        self.repo = repo
        self.creds = creds
        self.http = httpx.Client(base_url=url, timeout=30, transport=transport)
        self.token: str | None = None

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, answering an auth challenge once (Basic, or a Bearer token for the scope)."""
        headers = kwargs.pop("headers", {})
        try:
            auth = (self.creds.username, self.creds.password) if self.creds and not self.token else None
            response = self.http.request(method, path, headers={**headers, **self._headers()}, auth=auth, **kwargs)
            if response.status_code == 401 and response.headers.get("WWW-Authenticate", "").lower().startswith("bearer"):
                self.token = self._token(response.headers["WWW-Authenticate"], method)
                response = self.http.request(method, path, headers={**headers, **self._headers()}, **kwargs)
        except httpx.HTTPError as error:
            raise Unavailable(f"registry {self.http.base_url} is unreachable: {error}") from None
        if response.status_code in (401, 403):
            raise Unavailable(
                f"registry {self.http.base_url} refused the credentials ({response.status_code})",
                hint="check REGISTRY_USERNAME / REGISTRY_PASSWORD in the env file",
            )
        return response

    def _token(self, challenge: str, method: str) -> str:
        fields = dict(_CHALLENGE.findall(challenge))
        actions = "pull,push,delete" if method == "DELETE" else "pull"
        params = {"service": fields.get("service", ""), "scope": f"repository:{self.repo}:{actions}"}
        auth = (self.creds.username, self.creds.password) if self.creds else None
        try:
            answer = httpx.get(fields.get("realm", ""), params=params, auth=auth, timeout=30)
        except httpx.HTTPError as error:
            raise Unavailable(f"the registry's token service is unreachable: {error}") from None
        if answer.status_code != 200:
            raise Unavailable(f"the registry's token service refused ({answer.status_code})", hint="check the registry credentials")
        body = answer.json()
        return body.get("token") or body.get("access_token") or ""

    def tags(self) -> list[str]:
        found: list[str] = []
        path: str | None = f"/v2/{self.repo}/tags/list?n=100"
        while path:
            response = self.request("GET", path)
            if response.status_code == 404:
                return []  # no such repository yet: nothing pushed
            _expect(response, 200, "list tags")
            found.extend((response.json() or {}).get("tags") or [])
            link = _NEXT.search(response.headers.get("Link", ""))
            path = link.group(1) if link else None
        return sorted(found)

    def digest(self, tag: str) -> str | None:
        response = self.request("HEAD", f"/v2/{self.repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        _expect(response, 200, f"read the manifest of {tag}")
        digest = response.headers.get("Docker-Content-Digest", "")
        if not _DIGEST.match(digest):
            raise OperationFailed(f"the registry gave no valid digest for {self.repo}:{tag}")
        return digest

    def created(self, digest: str) -> str:
        """The image's creation time from its config blob ("" when the manifest has none)."""
        manifest = self.request("GET", f"/v2/{self.repo}/manifests/{digest}", headers={"Accept": MANIFEST_TYPES})
        _expect(manifest, 200, f"read manifest {digest[:19]}")
        config = (manifest.json() or {}).get("config", {}).get("digest")
        if not config:
            return ""
        blob = self.request("GET", f"/v2/{self.repo}/blobs/{config}", follow_redirects=True)
        _expect(blob, 200, "read the image config")
        return str((blob.json() or {}).get("created", ""))

    def delete(self, digest: str) -> str | None:
        """None when deleted; the reason otherwise (405: this registry does not allow deletes)."""
        response = self.request("DELETE", f"/v2/{self.repo}/manifests/{digest}")
        if response.status_code in (200, 202, 404):
            return None
        if response.status_code == 405:
            return "the registry does not allow deletes (storage.delete.enabled: false)"
        return f"HTTP {response.status_code}"


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise OperationFailed(f"registry: could not {what} (HTTP {response.status_code})")


def client_for(config: Config, environ: Mapping[str, str] | None = None) -> RegistryClient:
    require(config)
    return RegistryClient(base_url(config), repository(config), credentials(config, environ))


def require(config: Config) -> None:
    if not is_configured(config):
        raise UsageError("no registry is configured", hint="set registry.server in flashfit.yml (see `flashfit init`)")


# -- push and pin (through the engine) -----------------------------------------------------------
def login(client: EngineClient, config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """Log the engine client in, so pushes and Swarm service updates carry the credentials
    (docker-py sends them as X-Registry-Auth; the nodes then pull with them)."""
    creds = credentials(config, environ)
    if creds is None:
        return None
    auth = {"username": creds.username, "password": creds.password}
    server = config.registry.server
    from flashfit_ops.engine.errors import APIError, engine_errors, explanation

    with engine_errors(f"login to the registry {server} failed"):
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            try:
                client.login(registry=server, reauth=True, **auth)
                return auth
            except APIError as error:
                # The engine answers 500 when it could not reach the registry (a dropped
                # connection, "EOF"): worth another try. Refused credentials are not.
                if attempt == LOGIN_ATTEMPTS or not _transient_login_failure(error.status_code, explanation(error)):
                    raise
            time.sleep(LOGIN_BACKOFF * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _transient_login_failure(status: int | None, message: str) -> bool:
    return status is not None and status >= 500 and "unauthorized" not in message.lower()


def push(client: EngineClient, config: Config, version: str, environ: Mapping[str, str] | None = None) -> str:
    """Tag server.image:version into the registry, push it, return server/repo:version@sha256:..."""
    require(config)
    target = image_repository(config)
    from flashfit_ops.engine.errors import ImageNotFound

    try:
        client.images.get(f"{config.server.image}:{version}").tag(target, version)
    except ImageNotFound:
        raise UsageError(f"{config.server.image}:{version} is not on this engine", hint="build it first: flashfit build --version ...") from None
    auth = login(client, config, environ)
    digest = None
    client.api.timeout = PUSH_TIMEOUT  # a push streams for minutes; a silent layer upload is no hang
    for event in client.images.push(target, version, stream=True, decode=True, auth_config=auth):
        if event.get("error"):
            raise OperationFailed(f"push of {target}:{version} failed: {event['error']}")
        digest = (event.get("aux") or {}).get("Digest") or digest
    if not digest or not _DIGEST.match(digest):
        raise OperationFailed(f"push of {target}:{version} reported no digest")
    return f"{target}:{version}@{digest}"


def pinned(config: Config, version: str, environ: Mapping[str, str] | None = None) -> str:
    """server/repo:version@sha256:... as the registry holds it now; every node runs those bytes."""
    registry = client_for(config, environ)
    try:
        digest = registry.digest(version)
    finally:
        registry.close()
    if digest is None:
        raise UsageError(
            f"{image_repository(config)}:{version} is not in the registry",
            hint=f"push it first: flashfit build --version {version} --push",
        )
    return f"{image_repository(config)}:{version}@{digest}"


# -- list and prune remote tags -------------------------------------------------------------------
def remote_tags(config: Config, environ: Mapping[str, str] | None = None) -> list[ImageTag]:
    """Every tag of the repository in the registry, with its digest and creation time."""
    registry = client_for(config, environ)
    try:
        found = []
        for tag in registry.tags():
            digest = registry.digest(tag)
            if digest:
                found.append(ImageTag(tag, digest, registry.created(digest)))
        return found
    finally:
        registry.close()


def prune_remote(config: Config, *, keep: int, dry_run: bool, used_versions: set[str], deployed: list[str],
                 environ: Mapping[str, str] | None = None) -> PruneResult:  # fmt: skip
    """The local prune's policy applied to the registry's tags. A manifest is deleted by digest,
    which removes every tag on it: a digest that a kept tag shares is never deleted."""
    tags = remote_tags(config, environ)
    plan = plan_prune(tags, used_ids=set(), used_versions=used_versions, deployed=deployed, keep=keep)
    result = PruneResult(plan)
    if dry_run:
        return result
    kept_digests = {t.image_id for t in tags if t.version in plan.keep}
    registry = client_for(config, environ)
    try:
        for tag in plan.remove:
            reason = "shares its digest with a kept tag" if tag.image_id in kept_digests else registry.delete(tag.image_id)
            if reason:
                result.refused[tag.version] = reason
            else:
                result.removed.append(tag.version)
    finally:
        registry.close()
    return result
