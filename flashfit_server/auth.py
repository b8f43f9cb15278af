"""Bearer JWTs (HS256) for every mutating endpoint, and minting them for operators."""

from __future__ import annotations

import time

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from flashfit_server.errors import ApiError

ALGORITHM = "HS256"
_bearer = HTTPBearer(auto_error=False, description="HS256 JWT signed with JWT_SECRET_KEY; needs `exp`.")


def mint_token(secret: str, subject: str = "ops", ttl_seconds: int = 3600, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, "iat": issued, "exp": issued + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> dict:
    """The token's claims; raises ApiError(401) when the signature, expiry or shape is wrong."""
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired") from None
    except jwt.InvalidTokenError:
        raise _unauthorized("invalid token") from None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def require_auth(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> dict:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing bearer token")
    return verify_token(credentials.credentials, request.app.state.settings.jwt_secret_key)
