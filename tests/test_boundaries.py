"""Dependencies point one way: service never imports torch/training; client never imports the server side; training
never imports service or client. Each check runs in a fresh interpreter so nothing else has been imported."""

from __future__ import annotations

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
