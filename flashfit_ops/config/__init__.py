"""Configuration: the model of flashfit.yml, its loading and its cross-field rules."""

from flashfit_ops.config.load import DEFAULT_CONFIG_FILE, load_config, resolve
from flashfit_ops.config.model import Config

__all__ = ["Config", "DEFAULT_CONFIG_FILE", "load_config", "resolve"]
