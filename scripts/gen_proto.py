"""Regenerates the Python stubs in proto/charlm/v1 from the .proto files (``--check`` fails on drift)."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOS = sorted(p.relative_to(PROTO_DIR).as_posix() for p in (PROTO_DIR / "charlm").rglob("*.proto"))
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path) -> None:
    """Runs protoc for every charlm .proto, writing stubs under ``out``."""
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
    outs = [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", *outs]
    if protoc.main([*args, *PROTOS]) != 0:
        sys.exit("protoc failed")


def stubs(root: Path) -> list[Path]:
    """The generated files below ``root``, relative to it."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.name.endswith(SUFFIXES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ from fresh ones")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = stubs(Path(tmp)), stubs(PROTO_DIR)
        if args.check:
            same = [(PROTO_DIR / p).exists() and filecmp.cmp(Path(tmp) / p, PROTO_DIR / p, False) for p in fresh]
            drift = [str(p) for p, ok in zip(fresh, same, strict=True) if not ok]
            drift += [str(p) for p in committed if p not in fresh]
            if drift:
                sys.exit(f"generated stubs drifted from proto/ (run `make proto`): {', '.join(drift)}")
            print(f"proto stubs up to date ({len(fresh)} files)")
            return
        for p in committed:
            if p not in fresh:
                (PROTO_DIR / p).unlink()
        for p in fresh:
            shutil.copyfile(Path(tmp) / p, PROTO_DIR / p)
        print(f"wrote {len(fresh)} stub files under {PROTO_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
