"""Which package may import which: read from the source with ast (every import, those inside
functions too), so a forbidden import fails here before it ships.

    flashfit_contract   the standard library only (names and formats both sides share)
    flashfit_server     never flashfit_ops
    flashfit_ops        from the server's side, flashfit_contract only: importing flashfit_server
                        runs its __init__, which sets OMP_WAIT_POLICY for the server process
      config            no other flashfit_ops package (errors and fileio, two leaf modules, only)
      plan              never execute, images, swarm, backup, doctor, monitoring or cli (plans are
                        data, computed without an engine), never the Docker SDK
      cli               never the Docker SDK or boto3 itself (it calls the library)
      engine            the only package that imports the Docker SDK (connect, protocol, errors)
      subpackages       no import cycles between them
    every file            no import cycle between files of the three packages (an import inside a
                          function counts: it still ties the two files together)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flashfit_ops", "flashfit_server", "flashfit_contract")
SDKS = ("docker", "boto3", "botocore")

# Edges that close a cycle today, each owned by a change in flight; remove an entry when its
# import goes, and never add one without naming who removes it. None today.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_statements(source: str, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(module named, names taken from it) for each import at any depth of the file, relative
    imports resolved; a plain `import a.b` takes no names."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names]


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module `source` imports, at any depth of the file; relative imports resolved, and
    `from package import name` counted as package.name too (name may be a submodule)."""
    found: set[str] = set()
    for target, names in import_statements(source, module, is_package):
        found.add(target)
        found.update(f"{target}.{name}" for name in names)
    return found


def file_imports(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The files of `modules` that `source` imports: `from package import name` ties it to the
    file package/name.py when there is one, else to package/__init__.py (which defines name)."""
    found: set[str] = set()
    for target, names in import_statements(source, module, is_package):
        submodules = {f"{target}.{name}" for name in names} & modules
        found |= submodules
        if target in modules and (not names or len(submodules) < len(names)):
            found.add(target)
    found.discard(module)
    return found


def source_files() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def source_imports() -> dict[str, set[str]]:
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        for name, path in source_files().items()
    }


def file_graph() -> dict[str, set[str]]:
    files = source_files()
    modules = set(files)
    return {
        name: file_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)
        for name, path in files.items()
    }


def file_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The groups of files that import each other in a loop (strongly connected components of two
    or more files, Tarjan's algorithm), each sorted, smallest first member first."""
    edges = {node: sorted(set(targets) & set(graph)) for node, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(groups)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Each import that breaks a rule in the module docstring, as "importer -> imported: why"."""
    out: list[str] = []
    stdlib = sys.stdlib_module_names
    for module, imported in sorted(graph.items()):
        for target in sorted(set(imported)):
            top = target.split(".")[0]
            why = None
            if within(module, "flashfit_contract") and top not in stdlib and not within(target, "flashfit_contract"):
                why = "flashfit_contract imports the standard library only"
            elif within(module, "flashfit_server") and top == "flashfit_ops":
                why = "the server never imports the operations CLI"
            elif within(module, "flashfit_ops") and top == "flashfit_server":
                why = "flashfit_ops takes shared names from flashfit_contract, never flashfit_server"
            elif within(module, "flashfit_ops.config") and top == "flashfit_ops" and not within(target, "flashfit_ops.config") \
                    and target != "flashfit_ops" and not any(within(target, f"flashfit_ops.{m}") for m in ("errors", "fileio")):
                why = "config imports no other flashfit_ops package"
            elif within(module, "flashfit_ops.plan") and any(
                within(target, f"flashfit_ops.{p}") for p in ("execute", "images", "swarm", "backup", "doctor", "monitoring", "cli")
            ):
                why = "plans are data: plan imports no executor, engine or command"
            elif (within(module, "flashfit_ops.plan") or within(module, "flashfit_ops.cli")
                  or within(module, "flashfit_ops.config")) and top in SDKS:
                why = "the Docker SDK and boto3 stay behind the library"
            elif within(module, "flashfit_ops") and top == "docker" and not within(module, "flashfit_ops.engine"):
                why = "the Docker SDK is imported by flashfit_ops/engine only"
            if why:
                out.append(f"{module} -> {target}: {why}")
    return out


def subpackage(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "flashfit_ops" or len(parts) < 2:
        return None
    candidate = ROOT / "flashfit_ops" / parts[1]
    return f"flashfit_ops.{parts[1]}" if candidate.is_dir() else None


def subpackage_cycles(graph: Mapping[str, Iterable[str]], known: set[tuple[str, str]]) -> list[list[str]]:
    """Cycles between flashfit_ops subpackages (each found once), leaving out the known edges."""
    edges: dict[str, set[str]] = {}
    for module, imported in graph.items():
        source = subpackage(module)
        if source is None:
            continue
        for target in imported:
            unit = subpackage(target)
            if unit is not None and unit != source and (module, unit) not in known:
                edges.setdefault(source, set()).add(unit)
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    cycles.append([*path, start])
            elif nxt not in path and nxt > start:  # each cycle from its smallest member only
                walk(start, nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, start, [start])
    return cycles


def test_every_package_imports_only_what_its_layer_allows() -> None:
    assert violations(source_imports()) == []


def test_no_import_cycles_between_flashfit_ops_subpackages() -> None:
    graph = source_imports()
    assert subpackage_cycles(graph, KNOWN_CYCLE_EDGES) == []
    # Each known exception still exists: one that is gone must leave the list.
    for module, unit in sorted(KNOWN_CYCLE_EDGES):
        assert any(within(t, unit) for t in graph[module]), f"{module} no longer imports {unit}: drop it from KNOWN_CYCLE_EDGES"


def test_no_import_cycles_between_files() -> None:
    """flashfit_ops, flashfit_server and flashfit_contract, file by file: an import inside a
    function counts too (it only hides a loop until the function runs). Break a loop by moving
    what both files need into a lower module, not by importing later."""
    assert file_cycles(file_graph()) == []


def test_the_file_cycle_check_finds_the_loops_it_must() -> None:
    """The checker itself, on loops this tree once had (each written as its files wrote it)."""
    modules = {
        "flashfit_ops.images.prune", "flashfit_ops.images.registry", "flashfit_ops.images",
        "flashfit_ops.plan", "flashfit_ops.plan.common", "flashfit_ops.plan.repair", "flashfit_ops.plan.spare",
        "flashfit_ops.plan.blue_green", "flashfit_ops.doctor.registry", "flashfit_ops.doctor.checks",
        "flashfit_ops.doctor.checks.gpu", "flashfit_server.datastore", "flashfit_server.compaction",
    }
    sources = {
        "flashfit_ops.images.prune": ("def remote():\n    from flashfit_ops.images.registry import prune_remote\n", False),
        "flashfit_ops.images.registry": ("from flashfit_ops.images.prune import ImageTag\n", False),
        "flashfit_ops.plan.common": ("def leftovers():\n    from flashfit_ops.plan.repair import plan_repair\n", False),
        "flashfit_ops.plan.repair": ("from flashfit_ops.plan import spare\n", False),
        "flashfit_ops.plan.spare": ("from flashfit_ops.plan.common import Target\n", False),
        "flashfit_ops.doctor.registry": ("def all_checks():\n    from flashfit_ops.doctor.checks import ORDER\n", False),
        "flashfit_ops.doctor.checks": ("from flashfit_ops.doctor.checks import gpu\nORDER = []\n", True),
        "flashfit_ops.doctor.checks.gpu": ("from ..registry import check\n", False),
        "flashfit_server.datastore": ("def loop():\n    from flashfit_server.compaction import compact\n", False),
        "flashfit_server.compaction": ("from flashfit_server.datastore import DataStore\n", False),
        # Not a loop: `from flashfit_ops.plan import spare` names plan/spare.py, not plan/__init__.py.
        "flashfit_ops.plan": ("from flashfit_ops.plan import blue_green\n", True),
        "flashfit_ops.plan.blue_green": ("from flashfit_ops.plan.repair import plan_repair\n", False),
    }
    graph = {name: file_imports(source, name, is_package, modules) for name, (source, is_package) in sources.items()}
    assert file_cycles(graph) == [
        ["flashfit_ops.doctor.checks", "flashfit_ops.doctor.checks.gpu", "flashfit_ops.doctor.registry"],
        ["flashfit_ops.images.prune", "flashfit_ops.images.registry"],
        ["flashfit_ops.plan.common", "flashfit_ops.plan.repair", "flashfit_ops.plan.spare"],
        ["flashfit_server.compaction", "flashfit_server.datastore"],
    ]


def test_the_rules_catch_forbidden_imports() -> None:
    """The checker itself: each kind of forbidden import, written the ways code writes it."""
    plan_source = "def later():\n    from flashfit_ops.execute.backend import DockerBackend\n"
    cases = {
        "flashfit_ops.plan.single": imports_of(plan_source, "flashfit_ops.plan.single", False),
        "flashfit_ops.plan.common": imports_of("from ..execute import service\n", "flashfit_ops.plan.common", False),
        "flashfit_ops.plan.rolling": {"docker.types"},
        "flashfit_ops.cli.render_cmd": {"boto3"},
        "flashfit_ops.images.bootstrap": imports_of("def later():\n    from docker.errors import APIError\n", "flashfit_ops.images.bootstrap", False),
        "flashfit_ops.config.model": {"flashfit_ops.render"},
        "flashfit_ops.render": imports_of("from flashfit_server import metric_names\n", "flashfit_ops.render", False),
        "flashfit_server.app": {"flashfit_ops.errors"},
        "flashfit_contract.health": {"numpy"},
    }
    found = {line.split(" -> ")[0] for line in violations(cases)}
    assert found == set(cases)
    cyclic = {"flashfit_ops.plan.common": {"flashfit_ops.swarm.spec"}, "flashfit_ops.swarm.deploy": {"flashfit_ops.plan"}}
    assert subpackage_cycles(cyclic, set()) == [["flashfit_ops.plan", "flashfit_ops.swarm", "flashfit_ops.plan"]]


def _in_fresh_interpreter(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_importing_the_operations_library_leaves_the_server_and_its_environment_alone() -> None:
    """flashfit_server/__init__.py sets OMP_WAIT_POLICY; the CLI process must never run it."""
    code = (
        "import importlib, os, pkgutil, sys\n"
        "import flashfit_ops\n"
        "for info in pkgutil.walk_packages(flashfit_ops.__path__, 'flashfit_ops.'):\n"
        "    if not info.name.endswith(('__main__', 'keeper_main')):\n"
        "        importlib.import_module(info.name)\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), sorted(m for m in sys.modules if m.startswith('flashfit_server')))\n"
    )
    assert _in_fresh_interpreter(code) == "None []"


def test_rendering_leaves_the_cli_process_environment_alone(tmp_path: Path) -> None:
    code = (
        "import os, sys, runpy\n"
        "from flashfit_ops.config.example import write_example\n"
        f"write_example({str(tmp_path / 'flashfit.yml')!r})\n"
        f"sys.argv = ['flashfit', 'render', '-c', {str(tmp_path / 'flashfit.yml')!r}, '-o', {str(tmp_path / 'out')!r}]\n"
        "try:\n    runpy.run_module('flashfit_ops.cli.__main__', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    assert _in_fresh_interpreter(code).splitlines()[-1] == "None"
    assert (tmp_path / "out" / "docker-compose.prod.yml").is_file()
