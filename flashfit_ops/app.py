"""The application context: one object per invocation, built by the CLI from its options and
handed to every command (as hatch's Application is), instead of each command loading the
configuration itself and a module global deciding JSON mode.

Where the configuration comes from, first match wins:
  file:     the subcommand's -c/--config, then the one before it (`flashfit -c prod.yml deploy`),
            then $FLASHFIT_CONFIG, then ./flashfit.yml;
  overlay:  the subcommand's -e/--env, then the one before it, then $FLASHFIT_ENV, then none.
The overlay rule is the same for every command. Before it, `render`, `backup` and `restore`
applied `environments.prod` when no --env was given (the others applied none); they now follow
the rule too, and say so when the file has a `prod` overlay that they no longer apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flashfit_ops.config.model import Config

DEFAULT_CONFIG = Path("flashfit.yml")
CONFIG_VARIABLE = "FLASHFIT_CONFIG"
ENV_VARIABLE = "FLASHFIT_ENV"


@dataclass(frozen=True)
class GlobalOptions:
    """What was given before the subcommand (`flashfit -c FILE -e ENV <command>`)."""

    config: Path | None = None
    env: str | None = None


@dataclass
class App:
    config_path: Path
    env: str | None
    json: bool = False
    _config: Config | None = field(default=None, init=False, repr=False)

    @classmethod
    def resolve(
        cls,
        *,
        config: Path | None,
        env: str | None,
        json: bool = False,
        before: GlobalOptions | None = None,
        environ: dict[str, str] | None = None,
    ) -> App:
        """The subcommand's options win over those before it, which win over the variables."""
        environ = dict(os.environ) if environ is None else environ
        before = before or GlobalOptions()
        path = config or before.config or (Path(environ[CONFIG_VARIABLE]) if environ.get(CONFIG_VARIABLE) else DEFAULT_CONFIG)
        overlay = env or before.env or environ.get(ENV_VARIABLE) or None
        return cls(config_path=path, env=overlay, json=json)

    @property
    def console(self) -> ModuleType:
        """The one place that prints (flashfit_ops.console), in this invocation's JSON mode."""
        from flashfit_ops import console

        return console

    @property
    def config(self) -> Config:
        """The configuration, loaded and validated once (ConfigError, exit 2, when invalid)."""
        if self._config is None:
            from flashfit_ops.config import load_config

            self._config = load_config(self.config_path, env=self.env)
        return self._config

    def note_former_prod_default(self, command: str) -> None:
        """For the commands that used to apply `environments.prod` by default: say that the overlay
        is no longer applied implicitly (warnings are silent in --json mode)."""
        if self.env is None and (self.config.environments or {}).get("prod"):
            self.console.warn(
                f"`{command}` applies no environment overlay without -e (earlier versions applied "
                "environments.prod by default): pass -e prod, or set FLASHFIT_ENV=prod, for the prod overlay"
            )
