"""Writes docker/server.env, the compose server's settings file, from `charlm-serve`'s options (``--check``
fails when the committed file drifts from them)."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

from service.cli import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docker" / "server.env"
COMPOSE = ROOT / "docker-compose.yml"
HEADER = """\
# Settings of the compose servers (docker-compose.yml's `env_file`), one per `charlm-serve` option.
# Uncomment a line to set it. The variables in docker-compose.yml's `environment` take precedence over
# this file (they are set from the shell or .env). The defaults shown are charlm-serve's own; the images
# set CHARLM_HOST and CHARLM_METRICS_HOST (0.0.0.0), CHARLM_PORT and CHARLM_MODEL_REPO (docker/Dockerfile.*).
# Written by `python scripts/server_env.py` from service/cli.py; a test fails when they drift apart.
"""


def render() -> str:
    """The file's text: every option as a commented-out line with its default, its help above it."""
    in_compose = set(re.findall(r"^ +(CHARLM_[A-Z_]+):", COMPOSE.read_text(), re.MULTILINE))
    blocks = [HEADER]
    for o in OPTIONS:
        default = str(o.default).lower() if isinstance(o.default, bool) else o.default
        lines = [f"# {line}" for line in textwrap.wrap(o.help, 108)]
        if o.env in in_compose:
            lines.append("# (docker-compose.yml's `environment` sets this one: set it in the shell or .env)")
        blocks.append("\n".join([*lines, f"# {o.env}={default}"]) + "\n")
    return "\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    """Writes the file, or with ``--check`` compares it."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="fail if docker/server.env is not up to date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python scripts/server_env.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} up to date ({len(OPTIONS)} settings)")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(OPTIONS)} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
