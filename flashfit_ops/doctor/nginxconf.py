"""Read upstream blocks out of an nginx config (a file, or `nginx -T` output). Pure text work."""

from __future__ import annotations

import re

_COMMENT = re.compile(r"#[^\n]*")
_UPSTREAM = re.compile(r"\bupstream\s+([A-Za-z0-9_.\-]+)\s*\{([^{}]*)\}", re.S)
_SERVER = re.compile(r"(?:^|[;{\s])server\s+([^\s;]+)([^;]*);")
_PROXY_PASS = re.compile(r"\bproxy_pass\s+https?://([A-Za-z0-9_.\-]+)")


def upstreams(text: str) -> dict[str, list[str]]:
    """{upstream name: [server address, ...]} in file order."""
    clean = _COMMENT.sub("", text)
    found: dict[str, list[str]] = {}
    for match in _UPSTREAM.finditer(clean):
        servers = [m.group(1) for m in _SERVER.finditer(match.group(2))]
        found.setdefault(match.group(1), []).extend(servers)
    return found


def proxied_upstreams(text: str) -> dict[str, list[str]]:
    """Only the upstream blocks some proxy_pass uses (all of them when none is referenced)."""
    blocks = upstreams(text)
    used = set(_PROXY_PASS.findall(_COMMENT.sub("", text)))
    chosen = {name: servers for name, servers in blocks.items() if name in used}
    return chosen or blocks


def split_address(address: str) -> tuple[str, int | None]:
    """'name:8080' -> ('name', 8080); '[::1]:80' -> ('::1', 80); 'unix:/x' -> ('unix:/x', None)."""
    if address.startswith("unix:"):
        return address, None
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return address, 80


def config_args(command: list[str]) -> list[str]:
    """The `-c FILE` (and `-p PREFIX`) a running nginx was started with, to test the same file."""
    out: list[str] = []
    for flag in ("-c", "-p"):
        if flag in command:
            index = command.index(flag)
            if index + 1 < len(command):
                out += [flag, command[index + 1]]
    return out
