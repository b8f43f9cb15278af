"""Read a config file as hostile input: a regular file of bounded size, parsed as YAML with bounded
alias expansion and depth, no duplicate keys, no inf/nan, no integers beyond 64 bits. Every refusal
is a ConfigError/UsageError (exit 2) naming the file and, where known, the line.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from flashfit_ops.errors import ConfigError, Problem, UsageError

# A real flashfit.yml is a few KB; this leaves room for long comments and still parses in well under a second.
MAX_BYTES = 256 * 1024
# Nodes visited with aliases expanded: a few hundred bytes of nested aliases otherwise become billions.
MAX_NODES = 100_000
MAX_DEPTH = 32
MAX_INT = 2**63 - 1

LineMap = dict[tuple[str, ...], int]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(file: Path, limit: int = MAX_BYTES) -> str:
    """The file's text, refusing anything but a regular file of at most `limit` bytes. The open does
    not block (a FIFO with no writer would hang a plain open) and the read stops at limit+1 bytes."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UsageError(f"no configuration file at {file}", hint="run `flashfit init` to write a commented example") from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, device or socket"
            raise UsageError(f"cannot read {file}: it is {kind}, not a regular file", hint="point --config at a flashfit.yml")
        if info.st_size > limit:
            raise UsageError(f"{file} is {info.st_size} bytes; a configuration file may be at most {limit} bytes")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # it grew while we read it
            raise UsageError(f"{file} is over {limit} bytes; a configuration file may be at most {limit} bytes")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class _Refused(yaml.MarkedYAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class StrictLoader(_Loader):  # type: ignore[misc, valid-type]
    """SafeLoader that refuses what would be silently misread: duplicate keys, inf/nan, huge ints."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise _Refused("a mapping key must be a plain value", key_node.start_mark) from None
            if first is not None:
                raise _Refused(f"duplicate key {str(key)[:40]!r} (first on line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _Refused(f"{node.value[:40]!r} is not a finite number", node.start_mark)
        return value

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = node.value.replace("_", "").lstrip("+-")
        if len(digits) > 40:  # int() of thousands of digits is slow, or refused by Python itself
            raise _Refused("integer too large", node.start_mark)
        value = super().construct_yaml_int(node)
        if abs(value) > MAX_INT:
            raise _Refused("integer too large (at most 2**63 - 1)", node.start_mark)
        return value


StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


def _line_map(root: yaml.Node | None) -> LineMap:
    """The line of every mapping key and sequence item, walking iteratively with a budget: aliases
    make the document a graph whose expansion can be exponential in its size."""
    lines: LineMap = {}
    stack: list[tuple[yaml.Node | None, tuple[str, ...]]] = [(root, ())]
    visited = 0
    while stack:
        node, path = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise _Refused(f"the document expands to more than {MAX_NODES} values (aliases?)", node.start_mark if node else None)
        if len(path) > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep", node.start_mark if node else None)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*path, str(key_node.value)[:200])
                lines.setdefault(key, key_node.start_mark.line + 1)
                stack.append((value_node, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = (*path, str(index))
                lines.setdefault(key, item.start_mark.line + 1)
                stack.append((item, key))
    return lines


def parse_yaml(text: str, source: str | None) -> tuple[Any, LineMap]:
    """Parse one YAML document; return the data and the line of every key."""
    loader = StrictLoader(text)
    try:
        root = loader.get_single_node()
        lines = _line_map(root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"malformed YAML: {reason}", line, source)], source=source) from None
    except RecursionError:
        raise ConfigError([Problem("", f"malformed YAML: nested more than {MAX_DEPTH} levels deep", None, source)],
                          source=source) from None
    finally:
        loader.dispose()
    return data, lines


def parse_value(text: str) -> Any:
    """One scalar or small structure (a FLASHFIT__* variable), with the same limits; raises yaml.YAMLError."""
    try:
        data, _ = parse_yaml(text, None)
    except ConfigError as exc:
        raise yaml.YAMLError(exc.problems[0].message) from None
    return data
