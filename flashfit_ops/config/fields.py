"""Constrained string types for `flashfit.yml`. Every string in the config ends up in some other
language (nginx, YAML with Compose interpolation, a Dockerfile, a shell line, an env file), so each
kind of string accepts only characters that are plain in all of them: no quotes, `$`, `;`, braces,
backslashes, whitespace or control characters. A new string field picks one of these types; a unit
test fails for a plain `str` field.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field


@dataclass(frozen=True)
class SafeText:
    """Marks a string type as checked for the files it reaches (see the module docstring)."""

    kind: str
    # What the type accepts, as a full-match regex (before any extra check); None where a parser decides.
    pattern: str | None = None


def _must_be_text(value: object) -> object:
    # YAML turns `on`, `1.0` or `2024-01-01` into other types: only real strings are accepted.
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    return value


def _text(kind: str, pattern: str, advice: str, *, max_length: int = 255, extra=None):
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{_shown(value)} is not {kind}: {advice}")
        if extra is not None:
            extra(value)
        return value

    return Annotated[
        str, BeforeValidator(_must_be_text), Field(max_length=max_length), AfterValidator(check), SafeText(kind, pattern)
    ]


def _shown(value: str) -> str:
    """Quote a rejected value without letting it break the one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_REPOSITORY = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_REGISTRY = rf"(?:(?:{_DOMAIN}(?::[0-9]{{1,5}})?)/)?"
_PATH_CHARS = r"A-Za-z0-9._+@/-"


def _no_dot_segments(value: str) -> None:
    if any(part in (".", "..") for part in value.split("/")[1:]):
        raise ValueError(f"{_shown(value)} has a '.' or '..' component: write the folder plainly")
    if value.rstrip("/") == "":
        raise ValueError("the root folder / cannot be used: name a folder below it")


# A Docker image repository without tag (the version is appended when deploying).
ImageName = _text("an image name", _REGISTRY + _REPOSITORY, "write e.g. flashfit/backend or registry.example:5000/team/app")
# A Docker image reference: repository, optional tag, optional digest.
ImageRef = _text(
    "an image reference",
    _REGISTRY + _REPOSITORY + r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?",
    "write e.g. nginx:alpine, redis:7 or registry.example:5000/app:1.2",
)
# The path part of a URL, as nginx matches it and probes request it.
UrlPath = _text("a URL path", r"/[A-Za-z0-9._~/-]*", "start with / and use letters, digits and . _ ~ / -", max_length=200)
# An absolute folder inside a container (Dockerfile ENV and mkdir, Compose volume targets).
ContainerPath = _text(
    "an absolute folder inside the container",
    rf"/[{_PATH_CHARS}]*",
    "start with / and use letters, digits and . _ + @ - /",
    max_length=200,
    extra=_no_dot_segments,
)
# A file or folder on this host, relative to flashfit.yml or absolute (also ~/...).
HostPath = _text(
    "a host path",
    rf"(?:~/)?[{_PATH_CHARS}]+",
    "use letters, digits and . _ + @ - / (no spaces, quotes, $ or :)",
    max_length=1024,
)


def _names_a_file(value: str) -> None:
    if value.rstrip("/") != value or value.rsplit("/", 1)[-1] in ("", ".", "..", "~"):
        raise ValueError(f"{_shown(value)} names a folder: give the path of a file")


# A file on this host, relative to flashfit.yml or absolute (certificates, the env file).
HostFile = _text(
    "a host file path",
    rf"(?:~/)?[{_PATH_CHARS}]+",
    "use letters, digits and . _ + @ - / (no spaces, quotes, $ or :)",
    max_length=1024,
    extra=_names_a_file,
)
# A Docker volume name, or a host folder (starting with / or .) to bind-mount.
VolumeSource = _text(
    "a volume name or host folder",
    rf"[A-Za-z0-9][A-Za-z0-9_.-]*|[/.][{_PATH_CHARS}]*",
    "name a volume (letters, digits, _ . -) or a folder starting with / or . (no spaces, quotes, $ or :)",
    max_length=1024,
)
# A DNS name, optionally a wildcard: nginx server_name, TLS domains.
DomainName = _text("a domain name", rf"(?:\*\.)?{_DOMAIN}", "write e.g. shop.example or *.shop.example", max_length=253)
# ALLOWED_HOSTS: a domain name, a wildcard domain or * for any.
HostPattern = _text("a host name pattern", rf"\*|(?:\*\.)?{_DOMAIN}", "write e.g. shop.example, *.shop.example or *", max_length=253)
_AUTHORITY = rf"{_DOMAIN}(?::[0-9]{{1,5}})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{{1,5}})?"
# A registry's address: host[:port], as image references name it.
RegistryServer = _text("a registry address", rf"{_DOMAIN}(?::[0-9]{{1,5}})?", "write host[:port], e.g. registry.example:5000")
# An http(s) URL without query, fragment, quotes or spaces.
HttpUrl = _text(
    "an http(s) URL",
    rf"https?://(?:{_AUTHORITY})(?:/[A-Za-z0-9._~/%-]*)?",
    "write e.g. https://api.shop.example or http://localhost:8080/api",
    max_length=1024,
)
# A CORS origin: scheme, host and port, or * for any.
Origin = _text("a CORS origin", rf"\*|https?://(?:{_AUTHORITY})", "write e.g. https://shop.example or *", max_length=300)
# A Swarm placement constraint, e.g. node.labels.flashfit.models == true.
PlacementConstraint = _text(
    "a placement constraint",
    r"[A-Za-z0-9._/-]+ *(?:==|!=) *[A-Za-z0-9._/-]+",
    "write e.g. node.role == manager or node.labels.gpu != false",
)
# A short identifier such as an AWS region or profile name.
Identifier = _text("a name", r"[A-Za-z0-9][A-Za-z0-9._-]*", "use letters, digits and . _ -", max_length=128)
# The name of a variable in the env file (its value is a secret, never in flashfit.yml).
EnvVarName = _text("an environment variable name", r"[A-Z_][A-Z0-9_]*", "use A-Z, 0-9 and _, e.g. ALERT_WEBHOOK_URL", max_length=128)
# Where backups go: file://<folder> or s3://<bucket>/<prefix>.
BackupTarget = _text(
    "a backup target",
    rf"(?:file|s3)://(?:~/)?[{_PATH_CHARS}]+",
    "write file://./backups or s3://bucket/prefix (no spaces, quotes or $)",
    max_length=1024,
)
# The shared catalogue log every node follows: s3://<bucket>/<prefix>.
CatalogLogUrl = _text(
    "a catalogue log URL",
    r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/[A-Za-z0-9._-]+)*/?",
    "write s3://bucket/prefix (bucket: lower-case letters, digits, . and -)",
    max_length=600,
)
# The project name: Docker object names and labels are derived from it.
ProjectName = _text(
    "a project name", r"[a-z0-9][a-z0-9_-]{0,39}", "use 1 to 40 lower-case letters, digits, _ and -, starting with a letter or digit"
)


def _network(value: object) -> object:
    """An address or CIDR network, written back in its canonical form (what nginx `allow` takes)."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"{_shown(str(value))} is not an address or network: write e.g. 10.0.0.0/8 or 127.0.0.1")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{_shown(value)} is not an address or network: write e.g. 10.0.0.0/8 or 127.0.0.1") from None
    return str(network.network_address) if network.num_addresses == 1 else str(network)


# An IP address or CIDR network (nginx allow lists).
IpNetwork = Annotated[str, BeforeValidator(_network), SafeText("IP network")]
