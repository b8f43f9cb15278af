"""Server settings, read once from the environment (see `Settings.from_env` for every variable).

Variables: ENVIRONMENT, LOG_LEVEL, LOG_FORMAT (text|json), WORKERS, MODEL_CACHE_DIR,
VECTOR_STORE_DIR, MAX_BATCH_SIZE, INFERENCE_TIMEOUT (seconds of model time per request),
CORS_ORIGINS and ALLOWED_HOSTS (comma separated), JWT_SECRET_KEY, SECRET_KEY, APP_VERSION,
CLIP_MODEL, BLIP_MODEL, FASHION_MODEL (checkpoint names under MODEL_CACHE_DIR), VECTOR_INDEX
(flat|hnsw), MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, CAPTION_MAX_TOKENS, TORCH_THREADS (0 = cores
divided among workers), FUSION_WEIGHTS (clip,blip,fashion, e.g. "0.4,0.3,0.3"), DEVICE
(auto|cpu|cuda), PRECISION (auto|fp32|fp16; the CPU always runs fp32), MAX_BATCH_SIZE_CUDA (the
batch limit when the models run on the GPU; MAX_BATCH_SIZE is the CPU's),
DECODE_CONCURRENCY (image decodes at once per worker), MAX_JSON_BYTES (the largest json body),
JWT_MAX_LIFETIME (seconds; a token expiring later than that from now is refused).
CATALOG_SYNC_URL (s3://bucket/prefix: follow the shared catalogue log there, see replica.py),
CATALOG_SYNC_ENDPOINT (an S3-compatible endpoint URL), CATALOG_SYNC_REGION,
CATALOG_SYNC_POLL_INTERVAL (seconds between looks at the log), CATALOG_SYNC_CHECKPOINT_EVERY (write a
checkpoint of the whole catalogue every that many commits, 0: never); credentials come from the standard
AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), read by boto3, never by these settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flashfit_contract.modelfolder import DEFAULT_CHECKPOINTS
from flashfit_server import __version__

DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"
# Placeholders seen in example env files; in production they count as "not set".
PLACEHOLDER_SECRETS = frozenset(
    {"", DEV_JWT_SECRET, "your-jwt-secret-key-here", "your-super-secret-key-here", "changeme", "secret"}
)
MIN_SECRET_LENGTH = 32  # HS256 keys shorter than the hash are weak (RFC 7518 3.2)


class SettingsError(ValueError):
    """A variable has a value the server cannot use; the message names the variable."""


SYNC_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _secret(env: Mapping[str, str], name: str) -> str:
    """NAME, or the content of the file NAME_FILE names (Docker/Swarm secrets are mounted as
    files under /run/secrets, so they never sit in the environment)."""
    return env.get(name, "") or _secret_file(env, name)


def _secret_file(env: Mapping[str, str], name: str) -> str:
    """The content of the file NAME_FILE names ("" when NAME_FILE is not set)."""
    path = env.get(f"{name}_FILE", "").strip()
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None


@dataclass(frozen=True)
class Settings:
    environment: str = "development"
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    model_cache_dir: Path = Path("models")
    vector_store_dir: Path = Path("data")
    max_batch_size: int = 32
    inference_timeout: float = 30.0
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=lambda: ["*"])
    jwt_secret_key: str = DEV_JWT_SECRET
    jwt_secret_from_env: bool = False
    secret_key: str = ""
    app_version: str = __version__
    clip_model: str = DEFAULT_CHECKPOINTS["clip"]
    blip_model: str = DEFAULT_CHECKPOINTS["blip"]
    fashion_model: str = DEFAULT_CHECKPOINTS["fashion"]
    vector_index: str = "flat"
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    caption_max_tokens: int = 20
    torch_threads: int = 0
    fusion_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    refresh_interval: float = 0.2
    device: str = "auto"
    precision: str = "auto"
    max_batch_size_cuda: int = 64
    decode_concurrency: int = 2
    max_json_bytes: int = 4 * 1024 * 1024
    jwt_max_lifetime: int = 86_400
    catalog_sync_url: str = ""
    catalog_sync_endpoint: str = ""
    catalog_sync_region: str = ""
    catalog_sync_poll_interval: float = 0.5
    # The bucket's credentials when they come as files (AWS_ACCESS_KEY_ID_FILE, ...: Swarm
    # secrets); empty: boto3's own chain (environment, instance role).
    catalog_sync_credentials: tuple[str, str, str] = ("", "", "")
    catalog_sync_checkpoint_every: int = 1_000

    @property
    def is_production(self) -> bool:
        return self.environment.lower() in {"production", "prod"}

    @property
    def max_request_bytes(self) -> int:
        # Room for a base64 image (4/3 of the raw limit) plus the rest of a JSON or multipart body.
        return self.max_image_bytes * 4 // 3 + 256 * 1024

    @property
    def threads_per_worker(self) -> int:
        if self.torch_threads > 0:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))

    def production_problems(self) -> list[str]:
        """Why this configuration must not serve production traffic (secrets never echoed)."""
        if not self.is_production:
            return []
        problems = []
        if not self.jwt_secret_from_env or self.jwt_secret_key in PLACEHOLDER_SECRETS:
            problems.append("JWT_SECRET_KEY is missing or still a default/placeholder value")
        elif len(self.jwt_secret_key) < MIN_SECRET_LENGTH:
            problems.append(f"JWT_SECRET_KEY is shorter than {MIN_SECRET_LENGTH} characters")
        if self.secret_key and self.secret_key in PLACEHOLDER_SECRETS:
            problems.append("SECRET_KEY is still a placeholder value")
        return problems

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, default).strip() or default

        def number(name: str, default: float, kind: type, minimum: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            # Plain decimal digits only: int() would also take "1_0", float() "nan" and "inf".
            if not re.fullmatch(r"[0-9]+" if kind is int else r"[0-9]+(\.[0-9]*)?|\.[0-9]+", raw):
                raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}")
            value = kind(raw)
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
            return value

        def choice(name: str, default: str, allowed: set[str]) -> str:
            value = text(name, default).lower()
            if value not in allowed:
                raise SettingsError(f"{name}={value!r} must be one of {sorted(allowed)}")
            return value

        weights = defaults.fusion_weights
        if env.get("FUSION_WEIGHTS", "").strip():
            parts = _csv(env["FUSION_WEIGHTS"])
            try:
                values = tuple(float(p) for p in parts)
            except ValueError:
                raise SettingsError("FUSION_WEIGHTS must be three numbers: clip,blip,fashion") from None
            if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
                raise SettingsError("FUSION_WEIGHTS must be three non-negative numbers: clip,blip,fashion")
            weights = tuple(v / sum(values) for v in values)  # type: ignore[assignment]

        jwt_secret = _secret(env, "JWT_SECRET_KEY")
        sync_url, sync_endpoint = text("CATALOG_SYNC_URL", ""), text("CATALOG_SYNC_ENDPOINT", "")
        if sync_url:
            from flashfit_server.sharedlog import parse_sync_url

            try:
                parse_sync_url(sync_url)
            except ValueError as exc:
                raise SettingsError(f"CATALOG_SYNC_URL {exc}") from None
        if sync_endpoint and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:_-]+(:[0-9]{1,5})?/?", sync_endpoint):
            raise SettingsError(f"CATALOG_SYNC_ENDPOINT={sync_endpoint!r:.80} must be an http(s)://host[:port] URL")
        if sync_endpoint and not sync_url:
            raise SettingsError("CATALOG_SYNC_ENDPOINT is set but CATALOG_SYNC_URL is not")
        region = text("CATALOG_SYNC_REGION", "")
        if region and not re.fullmatch(r"[a-z0-9-]{2,32}", region):
            raise SettingsError(f"CATALOG_SYNC_REGION={region!r:.40} is not a region name")
        # Only the *_FILE forms: plain AWS_* variables are boto3's own to read.
        key_id, secret, token = (_secret_file(env, name) for name in SYNC_CREDENTIALS)
        credentials = (key_id, secret, token)
        if any(credentials) and not all(credentials[:2]):
            raise SettingsError("AWS_ACCESS_KEY_ID_FILE and AWS_SECRET_ACCESS_KEY_FILE must be set together")
        return cls(
            environment=text("ENVIRONMENT", defaults.environment).lower(),
            log_level=choice("LOG_LEVEL", defaults.log_level, {"debug", "info", "warning", "error", "critical"}),
            log_format=choice("LOG_FORMAT", defaults.log_format, {"text", "json"}),
            workers=int(number("WORKERS", defaults.workers, int, 1)),
            model_cache_dir=Path(text("MODEL_CACHE_DIR", str(defaults.model_cache_dir))),
            vector_store_dir=Path(text("VECTOR_STORE_DIR", str(defaults.vector_store_dir))),
            max_batch_size=int(number("MAX_BATCH_SIZE", defaults.max_batch_size, int, 1)),
            inference_timeout=float(number("INFERENCE_TIMEOUT", defaults.inference_timeout, float, 0.0001)),
            cors_origins=_csv(env.get("CORS_ORIGINS", "")),
            allowed_hosts=_csv(env.get("ALLOWED_HOSTS", "")) or ["*"],
            jwt_secret_key=jwt_secret or DEV_JWT_SECRET,
            jwt_secret_from_env=bool(jwt_secret),
            secret_key=_secret(env, "SECRET_KEY"),
            app_version=text("APP_VERSION", defaults.app_version),
            clip_model=text("CLIP_MODEL", defaults.clip_model),
            blip_model=text("BLIP_MODEL", defaults.blip_model),
            fashion_model=text("FASHION_MODEL", defaults.fashion_model),
            vector_index=choice("VECTOR_INDEX", defaults.vector_index, {"flat", "hnsw"}),
            max_image_bytes=int(number("MAX_IMAGE_BYTES", defaults.max_image_bytes, int, 1024)),
            max_image_pixels=int(number("MAX_IMAGE_PIXELS", defaults.max_image_pixels, int, 64)),
            caption_max_tokens=int(number("CAPTION_MAX_TOKENS", defaults.caption_max_tokens, int, 1)),
            torch_threads=int(number("TORCH_THREADS", defaults.torch_threads, int, 0)),
            fusion_weights=weights,
            device=choice("DEVICE", defaults.device, {"auto", "cpu", "cuda"}),
            precision=choice("PRECISION", defaults.precision, {"auto", "fp32", "fp16"}),
            max_batch_size_cuda=int(number("MAX_BATCH_SIZE_CUDA", defaults.max_batch_size_cuda, int, 1)),
            decode_concurrency=int(number("DECODE_CONCURRENCY", defaults.decode_concurrency, int, 1)),
            max_json_bytes=int(number("MAX_JSON_BYTES", defaults.max_json_bytes, int, 1024)),
            jwt_max_lifetime=int(number("JWT_MAX_LIFETIME", defaults.jwt_max_lifetime, int, 1)),
            catalog_sync_url=sync_url,
            catalog_sync_endpoint=sync_endpoint,
            catalog_sync_region=region,
            catalog_sync_poll_interval=float(
                number("CATALOG_SYNC_POLL_INTERVAL", defaults.catalog_sync_poll_interval, float, 0.05)),
            catalog_sync_credentials=credentials,
            catalog_sync_checkpoint_every=int(
                number("CATALOG_SYNC_CHECKPOINT_EVERY", defaults.catalog_sync_checkpoint_every, int, 0)),
        )

    def __repr__(self) -> str:  # never let a secret reach a log line or a traceback
        return f"Settings(environment={self.environment!r}, workers={self.workers}, ...)"
