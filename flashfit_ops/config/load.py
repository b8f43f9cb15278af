"""Resolve `flashfit.yml` + environment overlay + FLASHFIT__* variables + flags into one Config.

Every problem is reported with its field path and, where it came from the file, its line.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from flashfit_ops.config.model import SECRET_NAMES, Config
from flashfit_ops.config.reading import LineMap, parse_value, parse_yaml, read_text
from flashfit_ops.config.rules import cross_field_problems
from flashfit_ops.errors import ConfigError, Problem, UsageError

DEFAULT_CONFIG_FILE = "flashfit.yml"
ENV_PREFIX = "FLASHFIT__"

def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating levels as needed (for flags and env overrides)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """FLASHFIT__DEPLOY__STRATEGY=rolling -> {"deploy": {"strategy": "rolling"}}; values parsed as YAML."""
    overrides: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        parts = [p for p in name[len(ENV_PREFIX) :].split("__") if p]
        # Keys under server.environment are upper case like the variables they become.
        dotted = ".".join(p if _is_server_env_path(parts, i) else p.lower() for i, p in enumerate(parts))
        try:
            value = parse_value(raw)
        except yaml.YAMLError:
            value = raw
        set_path(overrides, dotted, value)
    return overrides


def _is_server_env_path(parts: list[str], index: int) -> bool:
    return index == 2 and [p.lower() for p in parts[:2]] == ["server", "environment"]


def _secret_problems(data: Any, lines: LineMap, path: tuple[str, ...] = ()) -> list[Problem]:
    problems = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = (*path, str(key))
            if str(key).upper() in SECRET_NAMES:
                problems.append(
                    Problem(
                        ".".join(here),
                        f"{key} is a secret: put it in the env file (secrets.env_file) or the environment, "
                        "never in flashfit.yml",
                        lines.get(here),
                    )
                )
            else:
                problems.extend(_secret_problems(value, lines, here))
    return problems


def _format_loc(loc: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(part) for part in loc)


def _validation_problems(exc: ValidationError, lines: LineMap, overlay_root: tuple[str, ...] | None) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = _format_loc(error["loc"])
        line = None
        if overlay_root is not None:
            line = lines.get((*overlay_root, *loc))
        line = line or lines.get(loc)
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `flashfit init` lists every key)"
        elif error["type"] == "literal_error":
            message = error["msg"].replace("Input should be", "must be")
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(Problem(".".join(loc), message, line))
    return problems


def resolve(
    data: Mapping[str, Any] | None,
    *,
    env: str | None = None,
    lines: LineMap | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Merge and validate already-parsed data; raise ConfigError listing every problem."""
    lines = lines or {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([Problem("", "the file must be a YAML mapping of settings", 1, source)], source=source)
    problems = _secret_problems(data, lines)
    merged = {k: v for k, v in data.items() if k != "environments"}
    environments = data.get("environments") or {}
    overlay_root = None
    if env is not None:
        if env not in ("dev", "prod"):
            raise UsageError(f"unknown environment {env!r}", hint="use --env dev or --env prod")
        overlay = environments.get(env) if isinstance(environments, Mapping) else None
        if overlay is not None and not isinstance(overlay, Mapping):
            problems.append(Problem(f"environments.{env}", "must be a mapping of settings", lines.get(("environments", env))))
        elif overlay:
            merged = deep_merge(merged, overlay)
            overlay_root = ("environments", env)
    merged = deep_merge(merged, env_overrides(environ if environ is not None else os.environ))
    merged = deep_merge(merged, overrides or {})
    merged["environments"] = environments
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        already = {p.path for p in problems}  # a secret is reported as such, not also as an unknown key
        problems.extend(p for p in _validation_problems(exc, lines, overlay_root) if p.path not in already)
        config = None
    if config is not None:
        for problem in cross_field_problems(config):
            line = lines.get(tuple(problem.path.split(".")))
            problems.append(Problem(problem.path, problem.message, line))
    if problems:
        raise ConfigError([Problem(p.path, p.message, p.line, source) for p in problems], source=source)
    assert config is not None
    config._base_dir = (base_dir or Path.cwd()).resolve()
    config._env = env
    return config


def load_config(
    path: str | Path | None = None,
    *,
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load `path` (default ./flashfit.yml). Relative paths inside resolve against its folder."""
    file = Path(path or DEFAULT_CONFIG_FILE)
    source = str(file)
    data, lines = parse_yaml(read_text(file), source)
    return resolve(
        data,
        env=env,
        lines=lines,
        environ=environ,
        overrides=overrides,
        source=source,
        base_dir=file.resolve().parent,
    )
