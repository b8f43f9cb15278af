"""Issue 14, category 2, as a property: whatever string goes into any string setting, either
validation refuses it naming that setting, or every rendered file keeps exactly its intended shape,
checked by its real consumer where one runs here:
- nginx: `nginx -t` passes, and the parsed configuration has the same directives and exactly the
  intended locations (the health paths in their places, nothing more);
- Compose and stack files, Prometheus and Grafana YAML: parse to exactly the intended keys;
  volume specs keep their number of `:` fields; no new `$` for Compose to interpolate;
- Dockerfile: the intended number of instructions, the same shell words in every RUN, the same
  ENV names, the probe command as intended;
- .env.example: exactly the intended keys and lines.
The string settings are found by walking the model, so a field added later is fuzzed too.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from flashfit_ops.config import resolve
from flashfit_ops.config.fields import SafeText
from flashfit_ops.config.model import Config
from flashfit_ops.errors import ConfigError
from flashfit_ops.render import render_all
from tests.conftest import require_tool
from tests.unit.ops.test_config_hostile import string_fields

from .test_render_tools import run, tls_material  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


# --- the settings under test -------------------------------------------------------------------


# {dotted path: is a list} for every string setting of the model, a field added later included.
SETTINGS = {path: is_list for path, (is_list, _) in string_fields().items()}


def accepted_values(metadata: list[object]) -> st.SearchStrategy[str]:
    """Values the setting's own pattern accepts, odd ones included (the extra checks may still refuse)."""
    marks = [m for m in metadata if isinstance(m, SafeText)]
    if marks and marks[0].pattern:
        return st.from_regex(marks[0].pattern, fullmatch=True).filter(lambda v: len(v) <= 200)
    return st.builds(lambda address, bits: f"{address}/{bits}", st.ip_addresses(), st.integers(0, 128)) | st.ip_addresses().map(str)


def base_data(tls: Path) -> dict[str, Any]:
    """Every optional block on, so every string setting reaches some rendered file."""
    return {
        "tls": {"enabled": True, "domains": ["shop.example"], "certificate": str(tls / "site.crt"), "key": str(tls / "site.key")},
        "server": {"environment": {"CORS_ORIGINS": ["https://shop.example"], "ALLOWED_HOSTS": ["shop.example"]}},
        "services": {"redis": {"enabled": True}, "frontend": {"image": "flashfit/frontend:1"}},
        "swarm": {"constraints": ["node.role == manager"]},
        "volumes": {"models": "./models", "data": "vector_indices"},
        "resources": {"limits": {"memory": "8G", "cpus": 4}, "reservations": {"memory": "4G", "cpus": 2}},
        "catalog": {"sync_url": "s3://flashfit-catalog/shop", "endpoint_url": "http://s3.example:9000", "region": "eu-west-1"},
    }


def with_value(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


# Hostile characters for every language involved, and plain ones after prefixes that make a value
# likely to pass validation, so that accepted values reach the templates too.
ALPHABET = "abz09._-/:~+@ \t\n\r\"'$;{}()#,=*[]\\`|&<>!%?^\x00\u2028é"
PLAIN = "abz09.-_/"
PREFIXES = ["", "/", "./", "/app/", "a", "http://a.example", "https://a.example:8443", "nginx:", "reg.example:5000/a/b",
            "node.role == ", "node.labels.x != ", "10.1.2.3", "2001:db8::", "shop.example", "*.", "file://", "s3://bucket/"]
value_text = st.one_of(
    st.text(max_size=24),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), st.text(alphabet=ALPHABET, max_size=12)),
    st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(PREFIXES), st.text(alphabet=PLAIN, max_size=10)),
    st.builds(lambda prefix, rest, bad: prefix + rest + bad, st.sampled_from(PREFIXES), st.text(alphabet=PLAIN, max_size=6),
              st.sampled_from(ALPHABET)),
    st.sampled_from(PREFIXES),
)


# --- consumers and parsers ---------------------------------------------------------------------


def nginx_tree(text: str) -> list[tuple[str, tuple[str, ...], Any]]:
    """nginx's own lexing (comments, quotes with escapes, braces, semicolons) into
    [(directive, args, children or None)]."""
    tokens: list[str | tuple[str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in "{};":
            tokens.append((ch,))
            i += 1
        elif ch in "\"'":
            j, word = i + 1, []
            while text[j] != ch:
                if text[j] == "\\" and text[j + 1] in (ch, "\\"):
                    j += 1
                word.append(text[j])
                j += 1
            tokens.append("".join(word))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{};":
                j += 1
            tokens.append(text[i:j])
            i = j

    def block(pos: int) -> tuple[list, int]:
        out, words = [], []
        while pos < len(tokens):
            token = tokens[pos]
            pos += 1
            if token == (";",):
                out.append((words[0], tuple(words[1:]), None))
                words = []
            elif token == ("{",):
                children, pos = block(pos)
                out.append((words[0], tuple(words[1:]), children))
                words = []
            elif token == ("}",):
                assert not words, f"unterminated directive {words}"
                return out, pos
            else:
                words.append(token)
        assert not words, f"unterminated directive {words}"
        return out, pos

    return block(0)[0]


def skeleton(tree: list) -> list:
    """Directive names, nested; `allow` lines are counted separately (one per allowed network)."""
    return [(name, skeleton(children) if children is not None else None) for name, _, children in tree if name != "allow"]


def directive_args(tree: list, wanted: str) -> list[tuple[str, ...]]:
    found = []
    for name, args, children in tree:
        if name == wanted:
            found.append(args)
        if children:
            found += directive_args(children, wanted)
    return found


def locations(tree: list) -> list[tuple[str, ...]]:
    found = []
    for name, args, children in tree:
        if name == "location":
            found.append(args)
        if children:
            found += locations(children)
    return found


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def shape_difference(got: Any, want: Any, where: str = "") -> str | None:
    """The first place where two parsed documents differ in shape, for a readable failure."""
    if isinstance(want, dict) and isinstance(got, dict):
        if list(map(str, got)) != list(map(str, want)):
            return f"{where or '/'}: keys {list(got)} instead of {list(want)}"
        return next((d for k in want if (d := shape_difference(got[k], want[k], f"{where}/{k}"))), None)
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return f"{where}: {len(got)} items instead of {len(want)}: {got!r}"
        return next((d for i, (g, w) in enumerate(zip(got, want)) if (d := shape_difference(g, w, f"{where}/{i}"))), None)
    if shape(got) != shape(want):
        return f"{where}: {got!r} instead of something like {want!r}"
    return None


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def volume_field_counts(document: dict) -> list[int]:
    services = document.get("services", {})
    return [len(v.split(":")) for name in sorted(services) for v in services[name].get("volumes", []) if isinstance(v, str)]


def dockerfile_instructions(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_facts(text: str) -> dict[str, Any]:
    instructions = dockerfile_instructions(text)
    runs = [len(shlex.split(line.split(None, 1)[1])) for line in instructions if line.startswith("RUN ")]
    env_names = [sorted(w.split("=", 1)[0] for w in shlex.split(line.split(None, 1)[1])) for line in instructions
                 if line.startswith("ENV ")]
    return {"count": len(instructions), "keywords": [line.split()[0] for line in instructions], "run_words": runs, "env": env_names}


def env_example_facts(text: str) -> tuple[list[str], int]:
    keys = [line.lstrip("# ").split("=", 1)[0] for line in text.splitlines() if "=" in line and line.lstrip("# ")[:1].isupper()
            and line.lstrip("# ").split("=", 1)[0].isidentifier()]
    return keys, len(text.splitlines())


def nginx_check(files: dict[str, str], cert_name: str, key_name: str, tls: Path) -> None:
    """`nginx -t` on the three proxy configs in a private mount namespace, where /etc/hosts knows
    the upstream names and /etc/nginx/ssl holds the test certificate under the configured names."""
    nginx = require_tool("nginx")
    require_tool("unshare")
    with tempfile.TemporaryDirectory(prefix="flashfit-nginx-") as folder:
        work = Path(folder)
        (work / "hosts").write_text("127.0.0.1 localhost backend frontend\n")
        ssl = work / "ssl"
        ssl.mkdir()
        shutil.copy(tls / "site.crt", ssl / cert_name)
        shutil.copy(tls / "site.key", ssl / key_name)
        tests = []
        for name, text in files.items():
            (work / name).write_text(text)
            tests.append(f"{nginx} -t -c {shlex.quote(str(work / name))}")
        script = (f"mount --bind {work / 'hosts'} /etc/hosts && mkdir -p /etc/nginx/ssl && mount --bind {ssl} /etc/nginx/ssl && "
                  + " && ".join(tests))
        result = run("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
        assert result.stderr.count("test is successful") == len(files), result.stderr


# --- the property ------------------------------------------------------------------------------


def render_text(data: dict[str, Any], base: Path) -> tuple[Config, dict[str, str]]:
    config = resolve(data, environ={}, base_dir=base)
    return config, {name: file.text for name, file in render_all(config).items()}


def check_rendered(config: Config, files: dict[str, str], baseline: dict[str, str], tls: Path) -> None:
    assert set(files) == set(baseline)
    health = config.healthcheck
    # nginx: the same directives, exactly the intended locations, and nginx itself agrees.
    proxies = {name: text for name, text in files.items() if name.startswith("nginx")}
    for name, text in proxies.items():
        tree, expected = nginx_tree(text), nginx_tree(baseline[name])
        assert skeleton(tree) == skeleton(expected), name
        swap = {"/health": health.liveness_path, "/ready": health.readiness_path}
        intended = [tuple(swap.get(arg, arg) for arg in args) for args in locations(expected)]
        assert locations(tree) == intended, name
        networks = [(network,) for network in config.monitoring.allow_from]
        assert directive_args(tree, "allow") == networks * len(directive_args(expected, "deny")), name
    cert_name = Path(config.tls.certificate or "site.crt").name
    key_name = Path(config.tls.key or "site.key").name
    nginx_check(proxies, cert_name, key_name, tls)
    # YAML and JSON files: exactly the intended keys, nothing new for Compose to interpolate.
    for name, text in files.items():
        if name.endswith((".yml", ".json")):
            load = json.loads if name.endswith(".json") else yaml.safe_load
            document, expected = load(text), load(baseline[name])
            if name.startswith("docker-") and "volumes" in document:
                # Named volumes are keys by design: exactly the configured ones.
                assert set(document["volumes"]) <= {config.volumes.models, config.volumes.data, "redis_data",
                                                     "prometheus_data", "grafana_data"}, name
                document, expected = dict(document, volumes=None), dict(expected, volumes=None)
            assert shape_difference(document, expected) is None, (name, shape_difference(document, expected))
            if name.startswith("docker-"):
                intended = "${FLASHFIT_VERSION:-latest}"  # the one interpolation the templates mean
                assert [s.count(intended) for s in strings(document)] == [s.count(intended) for s in strings(expected)], name
                assert not [s for s in strings(document) if "$" in s.replace(intended, "")], name
                assert volume_field_counts(document) == volume_field_counts(expected), name
    for name in ("docker-compose.prod.yml", "docker-stack.yml"):
        backend = yaml.safe_load(files[name])["services"]["backend"]
        assert backend["healthcheck"]["test"] == ["CMD", "flashfit-server", "probe", "--url",
                                                  f"http://127.0.0.1:8080{health.readiness_path}"]
    # Dockerfile: the same instructions, shell words and ENV names; the probe as intended.
    assert dockerfile_facts(files["Dockerfile"]) == dockerfile_facts(baseline["Dockerfile"])
    healthcheck = next(line for line in dockerfile_instructions(files["Dockerfile"]) if line.startswith("HEALTHCHECK"))
    assert json.loads(healthcheck.split(" CMD ", 1)[1]) == ["flashfit-server", "probe", "--url",
                                                            f"http://127.0.0.1:8080{health.readiness_path}"]
    # .env.example: exactly the intended keys and lines.
    assert env_example_facts(files[".env.example"]) == env_example_facts(baseline[".env.example"])


# No shrinking: each example runs nginx three times, and shrinking a failure took minutes; the
# failing example is printed whole.
@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({path: value_text | accepted_values(metadata) for path, (_, metadata) in string_fields().items()}))
def test_any_string_in_any_setting_is_refused_or_renders_as_intended(
    values: dict[str, str], tls_material: Path  # noqa: F811
) -> None:
    base = base_data(tls_material)
    workdir = tls_material.parent
    _, baseline = render_text(base, workdir)
    accepted = base
    for path, value in values.items():
        candidate = with_value(accepted, path, [value] if SETTINGS[path] else value)
        try:
            resolve(candidate, environ={}, base_dir=workdir)
        except ConfigError as error:
            # Refused: with a message on that very setting.
            # (or on one beside it, for rules between two settings: liveness and readiness paths equal,
            # a reservation above its limit)
            section = path.split(".")[0]
            assert any(p.path == path or p.path.startswith(path + ".") or p.path.split(".")[0] == section
                       for p in error.problems), (
                path, value, [p.__dict__ for p in error.problems])
            continue
        accepted = candidate
    config, files = render_text(accepted, workdir)
    check_rendered(config, files, baseline, tls_material)


def test_the_property_covers_every_string_setting() -> None:
    assert {"healthcheck.liveness_path", "server.environment.MODEL_CACHE_DIR", "server.image", "secrets.env_file",
            "tls.certificate", "services.frontend.api_url", "swarm.constraints", "monitoring.allow_from"} <= set(SETTINGS)
    assert len(SETTINGS) >= 25
