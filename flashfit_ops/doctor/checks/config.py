"""The configuration beyond what loading it already proved: every environment overlay validates,
and the env file holding the secrets exists and is private."""

from __future__ import annotations

from typing import Any

from flashfit_ops.doctor.context import DoctorContext
from flashfit_ops.doctor.registry import check
from flashfit_ops.doctor.result import FAILURE, WARNING, Finding, combine
from flashfit_ops.errors import ConfigError


@check("config", "Configuration valid (every environment overlay), secrets file present and private", timeout=5.0)
def config_check(ctx: DoctorContext) -> Finding:
    from flashfit_ops.config import load_config
    from flashfit_ops.config.secrets import env_file_is_private, env_file_path, parse_env_file

    parts: list[tuple[str, str, str | None]] = []
    details: dict[str, Any] = {"file": str(ctx.config_path) if ctx.config_path else None, "env": ctx.env}
    if ctx.config_path is not None:
        for env in (None, "dev", "prod"):
            if env == ctx.env:
                continue
            try:
                load_config(ctx.config_path, env=env)
            except ConfigError as error:
                label = env or "base"
                details[f"problems_{label}"] = [str(p) for p in error.problems]
                parts.append((FAILURE, f"the {label} configuration is invalid: {error.problems[0]}",
                              f"`flashfit config validate -c {ctx.config_path}` lists every problem"))
    env_file = env_file_path(ctx.config)
    details["env_file"] = str(env_file)
    if not env_file.is_file():
        if ctx.config.server.environment.ENVIRONMENT == "production":
            parts.append((WARNING, f"no env file at {env_file}: secrets must then come from the environment",
                          "write JWT_SECRET_KEY (and the other secrets) into it, mode 0600"))
    else:
        try:
            names = sorted(parse_env_file(env_file))
            details["env_names"] = names
        except ConfigError as error:
            parts.append((FAILURE, f"the env file is malformed: {error.problems[0]}", "fix it: KEY=VALUE lines"))
        if not env_file_is_private(env_file):
            parts.append((WARNING, f"{env_file} is readable by other users", f"chmod 600 {env_file}"))
    return combine(parts, f"valid ({ctx.env or 'base'} environment)" + ("" if not ctx.config_path else
                   f", {ctx.config_path.name}"), **details)
