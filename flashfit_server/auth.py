"""Bearer JWTs (HS256) for every mutating endpoint, and minting them for operators.

Time claims are read strictly: `exp` is required and, like `iat` and `nbf` when present, must be
a JSON number (PyJWT alone takes "99999999999" as a string). A token may not expire more than
JWT_MAX_LIFETIME seconds from now, so a leaked token never stays good for ever.
"""

from __future__ import annotations

import math
import time

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flashfit_server.errors import ApiError

ALGORITHM = "HS256"
TIME_CLAIMS = ("exp", "iat", "nbf")
CLOCK_SKEW = 60  # seconds of disagreement between the minting host's clock and ours
_bearer = HTTPBearer(auto_error=False, description="HS256 JWT signed with JWT_SECRET_KEY; needs `exp`.")


def mint_token(secret: str, subject: str = "ops", ttl_seconds: int = 3600, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verify_token(token: str, secret: str, max_lifetime: int | None = None, now: float | None = None) -> dict:
    """The token's claims; raises ApiError(401) when the signature, expiry or shape is wrong, or
    when it expires more than `max_lifetime` seconds from now."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None
    for name in TIME_CLAIMS:
        if name in claims and not _is_number(claims[name]):
            raise _unauthorized(f"invalid token: `{name}` must be a number")
    current = time.time() if now is None else now
    if max_lifetime is not None and claims["exp"] > current + max_lifetime + CLOCK_SKEW:
        raise _unauthorized(f"token lives longer than the {max_lifetime} s maximum (JWT_MAX_LIFETIME)")
    return claims


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def require_auth(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> dict:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing bearer token")
    settings = request.app.state.settings
    return verify_token(credentials.credentials, settings.jwt_secret_key, settings.jwt_max_lifetime)
