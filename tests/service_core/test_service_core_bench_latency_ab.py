"""bench/latency_ab.py end to end on a tiny model: servers of each configuration, alternating rounds (no timings
asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.latency_ab import METRICS, main


@pytest.mark.timeout(180)
def test_every_configuration_is_measured_every_round(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(model_repo / "tiny-gru" / "1"), "--rounds", "2", "--ttfc-requests", "2", "--chars", "40",
            "--config", "", "--config", "--inline-prompt-chars 0 --steps-wait-ms 0", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["config"] for c in out] == ["", "--inline-prompt-chars 0 --steps-wait-ms 0"]
    for c in out:
        assert all(len(c[m]) == 2 and all(v > 0 for v in c[m]) for m in METRICS)
    main(argv[:-1])  # the table
    assert "(defaults)" in capsys.readouterr().out


def test_a_configuration_the_server_refuses_is_an_error(model_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(model_repo / "tiny-gru" / "1"), "--config", "--steps-wait-ms -1"]) == 2
    assert "steps_wait_ms: must be >= 0" in capsys.readouterr().out
