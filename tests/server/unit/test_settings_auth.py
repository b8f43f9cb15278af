from __future__ import annotations

import time

import pytest

from flashfit_server.auth import mint_token, verify_token
from flashfit_server.errors import ApiError
from flashfit_server.settings import DEV_JWT_SECRET, Settings, SettingsError

GOOD_SECRET = "x" * 40


def test_defaults_are_development_with_a_dev_secret() -> None:
    settings = Settings.from_env({})
    assert settings.environment == "development" and settings.jwt_secret_key == DEV_JWT_SECRET
    assert settings.production_problems() == []


def test_environment_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "WORKERS": "3", "MAX_BATCH_SIZE": "8", "INFERENCE_TIMEOUT": "2.5", "CORS_ORIGINS": "https://a, https://b",
            "ALLOWED_HOSTS": "flashfit.ai", "VECTOR_INDEX": "HNSW", "LOG_FORMAT": "json", "APP_VERSION": "9.9",
            "FUSION_WEIGHTS": "2,1,1", "MODEL_CACHE_DIR": "/m", "VECTOR_STORE_DIR": "/d",
        }
    )
    assert settings.workers == 3 and settings.max_batch_size == 8 and settings.inference_timeout == 2.5
    assert settings.cors_origins == ["https://a", "https://b"] and settings.allowed_hosts == ["flashfit.ai"]
    assert settings.vector_index == "hnsw" and settings.log_format == "json" and settings.app_version == "9.9"
    assert settings.fusion_weights == pytest.approx((0.5, 0.25, 0.25))
    assert str(settings.model_cache_dir) == "/m" and str(settings.vector_store_dir) == "/d"


@pytest.mark.parametrize(
    "env,match",
    [({"WORKERS": "two"}, "WORKERS"), ({"WORKERS": "0"}, "WORKERS"), ({"VECTOR_INDEX": "ivf9"}, "VECTOR_INDEX"),
     ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"), ({"FUSION_WEIGHTS": "1,2"}, "FUSION_WEIGHTS")],
)
def test_bad_values_name_the_variable(env: dict, match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "secret", [None, "", DEV_JWT_SECRET, "your-jwt-secret-key-here", "short-secret"]
)
def test_production_refuses_missing_default_or_weak_secrets(secret: str | None) -> None:
    env = {"ENVIRONMENT": "production"} | ({"JWT_SECRET_KEY": secret} if secret is not None else {})
    problems = Settings.from_env(env).production_problems()
    assert problems and all("JWT_SECRET_KEY" in p for p in problems)
    assert not any(secret and secret in p for p in problems)  # never echo the secret


def test_production_accepts_a_real_secret_and_repr_hides_it() -> None:
    settings = Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET_KEY": GOOD_SECRET})
    assert settings.production_problems() == []
    assert GOOD_SECRET not in repr(settings)


def test_token_round_trip_and_failures() -> None:
    token = mint_token(GOOD_SECRET, subject="alice", ttl_seconds=60)
    assert verify_token(token, GOOD_SECRET)["sub"] == "alice"
    for bad in (mint_token("y" * 40), mint_token(GOOD_SECRET, ttl_seconds=-10, now=time.time()), "garbage"):
        with pytest.raises(ApiError) as info:
            verify_token(bad, GOOD_SECRET)
        assert info.value.status == 401


def test_secrets_can_come_from_files(tmp_path) -> None:
    """Swarm mounts secrets as files and points *_FILE at them; the variable itself wins."""
    secret_file = tmp_path / "jwt_secret_key"
    secret_file.write_text(GOOD_SECRET + "\n")
    settings = Settings.from_env({"ENVIRONMENT": "production", "JWT_SECRET_KEY_FILE": str(secret_file)})
    assert settings.jwt_secret_key == GOOD_SECRET and settings.production_problems() == []
    settings = Settings.from_env({"JWT_SECRET_KEY": "y" * 40, "JWT_SECRET_KEY_FILE": str(secret_file)})
    assert settings.jwt_secret_key == "y" * 40
    with pytest.raises(SettingsError, match="JWT_SECRET_KEY_FILE"):
        Settings.from_env({"JWT_SECRET_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("raw", ["1_0", "+2", " 3x", "nan", "inf", "1e3", "-1"])
def test_numbers_in_variables_are_plain_decimals(raw: str) -> None:
    with pytest.raises(SettingsError, match="MAX_BATCH_SIZE"):
        Settings.from_env({"MAX_BATCH_SIZE": raw})
    with pytest.raises(SettingsError, match="INFERENCE_TIMEOUT"):
        Settings.from_env({"INFERENCE_TIMEOUT": raw})


def test_hardening_variables_are_read() -> None:
    settings = Settings.from_env({"JWT_MAX_LIFETIME": "600", "DECODE_CONCURRENCY": "3", "MAX_JSON_BYTES": "2048"})
    assert (settings.jwt_max_lifetime, settings.decode_concurrency, settings.max_json_bytes) == (600, 3, 2048)
    assert Settings.from_env({"INFERENCE_TIMEOUT": "2.5"}).inference_timeout == 2.5


def _signed(claims: dict) -> str:
    import jwt

    return jwt.encode(claims, GOOD_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "claims",
    [{"exp": "99999999999"}, {"exp": 1e12}, {"exp": 2_000_000_000, "iat": "1"}, {"exp": 2_000_000_000, "nbf": True}],
)
def test_time_claims_must_be_numbers_within_the_max_lifetime(claims: dict) -> None:
    now = 1_999_999_000
    with pytest.raises(ApiError) as info:
        verify_token(_signed(claims), GOOD_SECRET, max_lifetime=86_400, now=now)
    assert info.value.status == 401


def test_a_token_inside_the_max_lifetime_passes() -> None:
    token = mint_token(GOOD_SECRET, ttl_seconds=600)
    assert verify_token(token, GOOD_SECRET, max_lifetime=600)["sub"] == "ops"
    with pytest.raises(ApiError):
        verify_token(mint_token(GOOD_SECRET, ttl_seconds=7200), GOOD_SECRET, max_lifetime=600)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"CATALOG_SYNC_URL": "https://bucket/x"}, "CATALOG_SYNC_URL must look like s3://bucket/prefix"),
        ({"CATALOG_SYNC_URL": "s3://Bad_Bucket/x"}, "CATALOG_SYNC_URL 'Bad_Bucket' is not a valid S3 bucket name"),
        ({"CATALOG_SYNC_URL": "s3://bucket/a/../b"}, "CATALOG_SYNC_URL prefix"),
        ({"CATALOG_SYNC_URL": "s3://bucket/x", "CATALOG_SYNC_ENDPOINT": "ftp://minio"}, "CATALOG_SYNC_ENDPOINT"),
        ({"CATALOG_SYNC_ENDPOINT": "http://minio:9000"}, "CATALOG_SYNC_URL is not"),
        ({"CATALOG_SYNC_URL": "s3://bucket/x", "CATALOG_SYNC_POLL_INTERVAL": "0"}, "CATALOG_SYNC_POLL_INTERVAL"),
        ({"CATALOG_SYNC_CHECKPOINT_EVERY": "-1"}, "CATALOG_SYNC_CHECKPOINT_EVERY='-1' is not a valid int"),
        ({"CATALOG_SYNC_CHECKPOINT_EVERY": "1e3"}, "CATALOG_SYNC_CHECKPOINT_EVERY"),
    ],
)
def test_catalog_sync_settings_are_checked_per_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(env)


def test_catalog_sync_settings_parse() -> None:
    settings = Settings.from_env({"CATALOG_SYNC_URL": "s3://shop/prod/", "CATALOG_SYNC_ENDPOINT": "http://127.0.0.1:9000",
                                  "CATALOG_SYNC_POLL_INTERVAL": "0.25", "AWS_SECRET_ACCESS_KEY": "not-in-settings"})
    assert (settings.catalog_sync_url, settings.catalog_sync_poll_interval) == ("s3://shop/prod/", 0.25)
    assert "not-in-settings" not in repr(settings) and Settings.from_env({}).catalog_sync_url == ""


def test_catalogue_credentials_come_from_secret_files_and_reach_the_s3_client(tmp_path) -> None:
    """On Swarm the bucket's credentials are secrets mounted as files: boto3 reads no *_FILE, so
    the settings do, and the shared log's client signs with them."""
    from flashfit_server.replica import replica_for
    from flashfit_server.sharedlog import SharedLog, SyncTarget

    (tmp_path / "id").write_text("AKIDFROMFILE\n")
    (tmp_path / "secret").write_text("s3cr3t-from-file\n")
    settings = Settings.from_env({
        "CATALOG_SYNC_URL": "s3://shop/log", "AWS_ACCESS_KEY_ID_FILE": str(tmp_path / "id"),
        "AWS_SECRET_ACCESS_KEY_FILE": str(tmp_path / "secret")})
    assert settings.catalog_sync_credentials == ("AKIDFROMFILE", "s3cr3t-from-file", "")
    assert "s3cr3t" not in repr(settings)
    target = SyncTarget(settings.catalog_sync_url, "http://127.0.0.1:9", None, settings.catalog_sync_credentials)
    assert "s3cr3t" not in repr(target)
    signer = SharedLog(target).client._request_signer._credentials
    assert (signer.access_key, signer.secret_key) == ("AKIDFROMFILE", "s3cr3t-from-file")
    assert replica_for  # the server builds its target from these settings (replica.replica_for)


@pytest.mark.parametrize("env", [
    {"AWS_ACCESS_KEY_ID_FILE": "/nonexistent/id"},
    {"AWS_SECRET_ACCESS_KEY_FILE": __file__},
])
def test_half_a_credential_pair_or_an_unreadable_file_is_named(env: dict) -> None:
    with pytest.raises(SettingsError, match="AWS_"):
        Settings.from_env(env)
    assert Settings.from_env({}).catalog_sync_checkpoint_every == 1000
    assert Settings.from_env({"CATALOG_SYNC_CHECKPOINT_EVERY": "0"}).catalog_sync_checkpoint_every == 0
