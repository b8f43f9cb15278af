"""Registry support: config (credentials refused in flashfit.yml), credentials from the env file,
the HTTP API v2 client against a mock transport, and the remote prune policy."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from flashfit_ops.config.load import resolve
from flashfit_ops.errors import ConfigError, UsageError
from flashfit_ops.images import registry
from flashfit_ops.images.tags import ImageTag

DIGEST = {v: "sha256:" + c * 64 for v, c in {"v0": "0", "v1": "1", "v2": "2", "v3": "3", "v3b": "3"}.items()}


def config(tmp_path: Path, **section):
    return resolve({"registry": {"server": "reg.example.com", **section}}, base_dir=tmp_path, environ={})


def test_credentials_in_the_yaml_are_refused(tmp_path: Path) -> None:
    for key in ("REGISTRY_PASSWORD", "password"):
        with pytest.raises(ConfigError) as info:
            resolve({"registry": {"server": "r.example.com", key: "hunter2"}}, base_dir=tmp_path, environ={})
        assert "env file" in str(info.value.problems[0].message) and "hunter2" not in str(info.value)


def test_credentials_from_env_file_or_password_file(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert registry.credentials(cfg, {}) is None
    (tmp_path / ".env").write_text("REGISTRY_USERNAME=ci\nREGISTRY_PASSWORD=s3cret\n")
    assert registry.credentials(cfg, {}) == registry.Credentials("ci", "s3cret")
    (tmp_path / ".env").write_text("REGISTRY_USERNAME=ci\n")
    secret = tmp_path / "registry_password"
    secret.write_text("from-swarm-secret\n")
    assert registry.credentials(cfg, {"REGISTRY_PASSWORD_FILE": str(secret)}).password == "from-swarm-secret"
    with pytest.raises(UsageError, match="incomplete"):
        registry.credentials(cfg, {})


def test_image_repository_and_scheme(tmp_path: Path) -> None:
    assert registry.image_repository(resolve({}, base_dir=tmp_path, environ={})) == "flashfit/backend"
    cfg = config(tmp_path, repository="team/recs")
    assert registry.image_repository(cfg) == "reg.example.com/team/recs"
    assert registry.base_url(cfg) == "https://reg.example.com"
    assert registry.base_url(config(tmp_path, server="127.0.0.1:5000")).startswith("http://")
    with pytest.raises(ConfigError):
        config(tmp_path, server="https://reg.example.com/")


def test_stack_names_the_registry_repository(tmp_path: Path) -> None:
    from flashfit_ops.render import render_stack

    import yaml

    stack = yaml.safe_load(render_stack(config(tmp_path), "v7"))
    assert stack["services"]["backend"]["image"] == "reg.example.com/flashfit/backend:v7"


class FakeRegistry:
    """Distribution's answers for one repository, behind a Bearer challenge."""

    def __init__(self, deletes: bool = True):
        self.tags = dict(DIGEST)
        self.deletes = deletes
        self.deleted: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer tok":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.example.com/token",service="reg"'})
        path = request.url.path
        if path.endswith("/tags/list"):
            names = sorted(self.tags)
            if request.url.params.get("last"):
                return httpx.Response(200, json={"tags": names[3:]})
            return httpx.Response(200, json={"tags": names[:3]}, headers={"Link": '</v2/r/tags/list?n=2&last=v2>; rel="next"'})
        if "/manifests/" in path:
            ref = path.rsplit("/", 1)[1]
            if request.method == "DELETE":
                if not self.deletes:
                    return httpx.Response(405)
                self.deleted.append(ref)
                return httpx.Response(202)
            if request.method == "HEAD":
                return httpx.Response(200, headers={"Docker-Content-Digest": self.tags[ref]}) if ref in self.tags else httpx.Response(404)
            return httpx.Response(200, json={"config": {"digest": "sha256:c" + ref[-3:]}})
        if "/blobs/" in path:
            return httpx.Response(200, json={"created": "2026-01-0" + path[-1] + "T00:00:00Z"})
        return httpx.Response(404)


@pytest.fixture
def fake(monkeypatch):
    fake = FakeRegistry()

    def token(url, params=None, auth=None, timeout=None):
        assert params["scope"].startswith("repository:r:")
        return httpx.Response(200, json={"token": "tok"})

    monkeypatch.setattr(httpx, "get", token)
    monkeypatch.setattr(registry, "client_for", lambda cfg, environ=None: registry.RegistryClient("https://reg", "r", None, httpx.MockTransport(fake)))
    return fake


def test_tags_paginated_digests_and_token_flow(fake, tmp_path: Path) -> None:
    tags = registry.remote_tags(config(tmp_path))
    assert [(t.version, t.image_id) for t in tags] == [(v, DIGEST[v]) for v in ("v0", "v1", "v2", "v3", "v3b")]
    assert registry.pinned(config(tmp_path, repository="r"), "v2").endswith(f"/r:v2@{DIGEST['v2']}")
    with pytest.raises(UsageError, match="not in the registry"):
        registry.pinned(config(tmp_path), "v9")


def test_remote_prune_keeps_in_use_and_shared_digests(fake, tmp_path: Path) -> None:
    result = registry.prune_remote(config(tmp_path), keep=1, dry_run=False, used_versions={"v1"}, deployed=["v2"])
    # v1 runs, v2 is the rollback target, v3 the newest; v3b shares v3's digest (a delete by
    # digest would take v3 with it); v0 goes.
    assert result.plan.keep == {"v3": "newest build", "v2": "rollback target", "v1": "used by a container or service"}
    assert result.removed == ["v0"] and fake.deleted == [DIGEST["v0"]]
    assert result.refused == {"v3b": "shares its digest with a kept tag"}


def test_remote_prune_where_deletes_are_off(fake, tmp_path: Path) -> None:
    fake.deletes = False
    result = registry.prune_remote(config(tmp_path), keep=1, dry_run=False, used_versions=set(), deployed=[])
    assert "does not allow deletes" in result.refused["v2"] and result.removed == []
    fake.deletes = True
    dry = registry.prune_remote(config(tmp_path), keep=1, dry_run=True, used_versions=set(), deployed=[])
    assert dry.removed == [] and fake.deleted == [] and [t.version for t in dry.plan.remove] == ["v3b", "v2", "v1", "v0"]


class LoginEngine:
    """The engine's /auth as the SDK raises it: `answers` are the status codes of successive calls."""

    def __init__(self, *answers: int):
        self.answers = list(answers)
        self.calls = 0

    def login(self, **_auth) -> dict:
        import docker.errors
        import requests

        self.calls += 1
        status = self.answers.pop(0)
        if status == 200:
            return {"Status": "Login Succeeded"}
        response = requests.Response()
        response.status_code = status
        words = 'Get "http://127.0.0.1:5000/v2/": EOF' if status >= 500 else "unauthorized: incorrect username or password"
        raise docker.errors.APIError("auth failed", response=response, explanation=words)


@pytest.fixture
def login_config(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(registry.time, "sleep", lambda _s: None)
    (tmp_path / ".env").write_text("REGISTRY_USERNAME=ci\nREGISTRY_PASSWORD=s3cret-pw\n")
    return config(tmp_path, server="127.0.0.1:5000")


def test_login_tries_again_when_the_engine_could_not_reach_the_registry(login_config) -> None:
    engine = LoginEngine(500, 500, 200)
    assert registry.login(engine, login_config, {}) == {"username": "ci", "password": "s3cret-pw"}
    assert engine.calls == 3


def test_login_that_keeps_failing_is_a_clear_error_without_the_password(login_config) -> None:
    from flashfit_ops.errors import OperationFailed

    engine = LoginEngine(*[500] * registry.LOGIN_ATTEMPTS)
    with pytest.raises(OperationFailed) as info:
        registry.login(engine, login_config, {})
    assert engine.calls == registry.LOGIN_ATTEMPTS
    assert "login to the registry 127.0.0.1:5000 failed" in str(info.value) and "EOF" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_refused_credentials_are_not_tried_again(login_config) -> None:
    from flashfit_ops.errors import OperationFailed

    engine = LoginEngine(401, 200)
    with pytest.raises(OperationFailed, match="incorrect username or password"):
        registry.login(engine, login_config, {})
    assert engine.calls == 1
