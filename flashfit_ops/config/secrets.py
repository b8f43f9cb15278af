"""Secrets live in the env file (default .env, mode 0600) or the environment; never in flashfit.yml,
never printed. This module reads them and produces views of the config that are safe to print."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Mapping

from flashfit_ops.config.model import SECRET_NAMES, Config
from flashfit_ops.errors import Problem, ConfigError

REDACTED = "***"
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; # comments; optional quotes. A malformed line is an error naming its line."""
    values: dict[str, str] = {}
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            problems.append(Problem("", "expected KEY=VALUE", number, str(path)))
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    if problems:
        raise ConfigError(problems, source=str(path))
    return values


def env_file_path(config: Config) -> Path:
    return config.resolve_path(config.secrets.env_file)


def env_file_is_private(path: Path) -> bool:
    return not (path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def load_secrets(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secrets for the server: env file first, the process environment wins."""
    environ = os.environ if environ is None else environ
    path = env_file_path(config)
    values = parse_env_file(path) if path.is_file() else {}
    for name in SECRET_NAMES:
        if environ.get(name):
            values[name] = environ[name]
    return {k: v for k, v in values.items() if k in SECRET_NAMES}


def secret_sources(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where each known secret comes from, without its value."""
    environ = os.environ if environ is None else environ
    path = env_file_path(config)
    in_file = parse_env_file(path) if path.is_file() else {}
    sources = {}
    for name in sorted(SECRET_NAMES):
        if environ.get(name):
            sources[name] = f"{REDACTED} (environment)"
        elif in_file.get(name):
            sources[name] = f"{REDACTED} ({config.secrets.env_file})"
        else:
            sources[name] = "not set"
    return sources


def redact(values: Any) -> Any:
    """Replace the value of every key named like a secret, at any depth."""
    if isinstance(values, dict):
        return {k: (REDACTED if str(k).upper() in SECRET_NAMES else redact(v)) for k, v in values.items()}
    if isinstance(values, list):
        return [redact(v) for v in values]
    return values


def redacted_view(config: Config) -> dict[str, Any]:
    view = redact(config.model_dump(mode="json", exclude={"environments"}))
    view["environment_applied"] = config.env or "base"
    view["secrets"] = secret_sources(config)
    return view
