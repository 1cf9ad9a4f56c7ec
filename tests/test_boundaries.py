"""Dependencies point one way: service never imports torch/training; client never imports the server side; training
never imports service or client; within a package no module imports itself through others. Each import check runs
in a fresh interpreter so nothing else has been imported."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(package: str) -> list[str]:
    """Every module of a package, found on disk (so a new module is checked without editing this test)."""
    folder = ROOT / package
    if not folder.is_dir():
        return []
    names = [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(folder)]) if m.name != "__main__"]
    return [package, *names]


def imported_after(mods: list[str]) -> set[str]:
    """Top-level package names in sys.modules after importing ``mods`` in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print('\\n'.join(sorted({k.split('.')[0] for k in sys.modules} | set(sys.modules))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_service_never_imports_torch_or_training() -> None:
    loaded = imported_after(modules("service"))
    assert "service.server" in loaded
    assert not {"torch", "training", "client"} & loaded


def test_client_imports_only_the_wire_protocol() -> None:
    mods = modules("client")
    if len(mods) < 2:
        pytest.skip("client/ has no modules yet")
    loaded = imported_after(mods)
    assert not {"onnxruntime", "onnx", "numpy", "service", "training", "torch"} & loaded


def test_training_never_imports_service_or_client() -> None:
    loaded = imported_after(modules("training"))
    assert not {"service", "client"} & loaded


def imports_within(package: str) -> dict[str, set[str]]:
    """Each module of a package -> the package's modules it imports, read from its source, imports made only for
    type checking included (a cycle there is still two modules that cannot be read one without the other)."""
    found = {m: ROOT / package / f"{m.rpartition('.')[2]}.py" for m in modules(package)[1:]}
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        named: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                named.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                named.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        graph[name] = (named & found.keys()) - {name}
    return graph


def a_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as [a, b, ..., a], or [] when there is none (depth-first, in name order)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(m: str) -> list[str]:
        path.append(m)
        for d in sorted(graph[m]):
            if d in path:
                return [*path[path.index(d) :], d]
            if d not in done and (cycle := visit(d)):
                return cycle
        done.add(path.pop())
        return []

    for m in sorted(graph):
        if m not in done and (cycle := visit(m)):
            return cycle
    return []


@pytest.mark.parametrize("package", ["training", "service", "client", "bench"])
def test_no_module_imports_itself_through_others(package: str) -> None:
    graph = imports_within(package)
    assert len(graph) > 5  # (the package's modules were found)
    cycle = a_cycle(graph)
    assert cycle == [], " -> ".join(cycle)
