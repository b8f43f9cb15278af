"""Pure ASGI guards that run before routing: request body size and Host header."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flashfit_server.errors import error_body

# Loopback names are always accepted so the container HEALTHCHECK (`flashfit-server probe`)
# works whatever ALLOWED_HOSTS says.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing re-raises it instead of calling it a 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than the {limit} byte limit")


async def _send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _send_json(send, 400, error_body("bad_request", "invalid Content-Length"))
                return
            if too_big:
                message = f"request body is larger than the {self.max_bytes} byte limit"
                await _send_json(send, 413, error_body("payload_too_large", message))
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # chunked bodies carry no Content-Length
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class AllowedHosts:
    def __init__(self, app: ASGIApp, allowed: list[str]):
        self.app = app
        self.allow_all = "*" in allowed
        self.exact = {h.lower() for h in allowed if not h.startswith("*.")} | set(LOOPBACK_HOSTS)
        self.suffixes = tuple(h[1:].lower() for h in allowed if h.startswith("*."))

    def _allowed(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower()
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_all or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if not self._allowed(host):
            await _send_json(send, 400, error_body("invalid_host", "Host header is not in ALLOWED_HOSTS"))
            return
        await self.app(scope, receive, send)
