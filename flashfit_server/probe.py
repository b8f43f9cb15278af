"""The container health check, `flashfit-server probe --url URL [--timeout S]`.

Docker runs it in every replica every second, so its cost is paid all the time: this path
imports only `socket` and speaks just enough HTTP/1.0 to read a status line, which took a
check from ~75 ms to ~29 ms of CPU in the server image (the argparse CLI with urllib spends the
difference on imports). Anything it does not handle (`--body`, `--help`, https, an IPv6
literal) returns None and the full CLI (cli.cmd_probe) answers instead, with the same defaults
(DEFAULT_URL, DEFAULT_TIMEOUT). Exit codes as the CLI's: 0 when the URL answers 200, 1 otherwise."""

from __future__ import annotations

import socket
import sys

DEFAULT_URL = "http://127.0.0.1:8080/ready"
DEFAULT_TIMEOUT = 3.0
STATUS_LINE_LIMIT = 4096


def fast_probe(argv: list[str]) -> int | None:
    """Run the probe for `argv` (the arguments after `probe`), or None to leave it to the CLI."""
    options = {"--url": DEFAULT_URL, "--timeout": str(DEFAULT_TIMEOUT)}
    rest = list(argv)
    while rest:
        name, equals, value = rest.pop(0).partition("=")
        if name not in options:
            return None
        if not equals:
            if not rest:
                return None
            value = rest.pop(0)
        options[name] = value
    url = options["--url"]
    target = _split_url(url)
    try:
        timeout = float(options["--timeout"])
    except ValueError:
        return None
    if target is None or not timeout > 0:
        return None
    try:
        status = status_of(*target, timeout=timeout)
    except (OSError, ValueError) as error:
        print(f"probe {url}: {error}", file=sys.stderr)
        return 1
    print(f"probe {url}: {status}")
    return 0 if status == 200 else 1


def _split_url(url: str) -> tuple[str, int, str] | None:
    """(host, port, path) of a plain http URL; None for anything else."""
    if not url.startswith("http://"):
        return None
    authority, slash, path = url[len("http://") :].partition("/")
    host, colon, port = authority.rpartition(":")
    if not colon:
        host, port = authority, "80"
    if not host or "[" in host or "@" in host or not port.isdigit():
        return None
    return host, int(port), slash + path if slash else "/"


def status_of(host: str, port: int, path: str, *, timeout: float) -> int:
    """The HTTP status code `GET path` gets, read from the status line alone."""
    request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.settimeout(timeout)
        connection.sendall(request.encode("latin-1"))
        head = b""
        while b"\r\n" not in head and len(head) < STATUS_LINE_LIMIT:
            chunk = connection.recv(STATUS_LINE_LIMIT)
            if not chunk:
                break
            head += chunk
    version, _, rest = head.partition(b"\r\n")[0].partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP answer: {head[:60]!r}")
    return int(code)
