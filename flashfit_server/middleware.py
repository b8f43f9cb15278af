"""Pure ASGI guards that run before routing: request body size, the shape of JSON bodies, the
Host header, and headers every response carries."""

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


# A JSON body's cost is mostly in its values: 13 MB of small keys took a worker's event loop for
# seconds to parse and validate, many times what one long base64 string of that size costs.
# Every body this API accepts has a handful of keys (strings included, 1000 characters of
# `text` are the most), so counting structural bytes before parsing rejects the costly shapes
# cheaply. Nesting is bounded far below the JSON parser's recursion limit.
# 1280: the most a real body needs (1000 characters of `text`, all commas, plus its keys) with room
# to spare. Each extra key a body may carry is one validation error that FastAPI builds and keeps
# on the event loop: 4096 separators held it for about 60 ms, so /health's p99 passed 100 ms.
MAX_JSON_SEPARATORS = 1280  # "," and ":" anywhere in the body, strings included
MAX_JSON_OPENERS = 256  # "[" and "{" anywhere in the body, so nesting is at most this deep


def _is_json(headers: dict[bytes, bytes]) -> bool:
    """What FastAPI would parse as JSON: no content type, application/json or application/*+json."""
    value = headers.get(b"content-type")
    if value is None:
        return True
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class JsonShape:
    """Structural bytes counted chunk by chunk as the body arrives, so no single count holds the
    event loop (counting 13 MB at once took tens of milliseconds here) and a costly body is
    refused at the chunk that crosses a limit, before the rest is even read."""

    def __init__(self) -> None:
        self.separators = 0
        self.openers = 0

    def add(self, chunk: bytes) -> str | None:
        self.separators += chunk.count(b",") + chunk.count(b":")
        self.openers += chunk.count(b"[") + chunk.count(b"{")
        if self.separators > MAX_JSON_SEPARATORS:
            return f"JSON body has more than {MAX_JSON_SEPARATORS} values"
        if self.openers > MAX_JSON_OPENERS:
            return f"JSON body has more than {MAX_JSON_OPENERS} arrays and objects"
        return None


class JsonShapeLimit:
    """Reads a JSON body whole and refuses, with a 413 before anything parses it, one larger than
    `max_bytes` or with too many values; hands the rest on unchanged. JSON has its own byte limit,
    below the multipart one: the parser holds the event loop (and the interpreter lock) for the
    whole body (tens of milliseconds per MB on this host's loaded cores), while multipart is
    parsed chunk by chunk."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", [])) if scope["type"] == "http" else {}
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or not _is_json(headers):
            await self.app(scope, receive, send)
            return
        too_large = error_body("payload_too_large", f"a JSON body may hold at most {self.max_bytes} bytes")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, too_large)
            return
        chunks, shape, received, more = [], JsonShape(), 0, True
        try:
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    await _send_json(send, 413, too_large)
                    return
                problem = shape.add(chunk)
                if problem:
                    await _send_json(send, 413, error_body("payload_too_complex", problem))
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
        except BodyTooLarge as exc:
            await _send_json(send, 413, error_body("payload_too_large", exc.detail))
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` on every response, errors and early rejections included,
    so a browser never reinterprets an uploaded image or a JSON error as HTML or script."""

    HEADERS = ((b"x-content-type-options", b"nosniff"),)

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
