"""charlm-serve's configuration: flag > CHARLM_* env > default, clear errors, and a --help that explains."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import OPTIONS, build_config
from service.config import ServiceConfig
from service.logs import JsonFormatter, LogfmtFormatter


def test_defaults_listen_on_localhost_with_the_shipped_repository() -> None:
    c = build_config([], {})
    assert c == ServiceConfig()
    assert (c.host, c.port, c.model_repo, c.metrics_port) == ("127.0.0.1", 50051, Path("models"), 9090)


def test_flag_beats_env_beats_default() -> None:
    env = {"CHARLM_PORT": "6000", "CHARLM_MAX_STREAMS": "7", "CHARLM_PROVIDER": "cuda", "CHARLM_REFLECTION": "false"}
    c = build_config(["--port", "7000", "--max-batch", "32", "--lanes", "3", "--session-ttl-seconds", "1.5"], env)
    assert c.port == 7000  # flag over env
    assert c.limits.max_streams == 7 and c.runtime.provider == "cuda" and c.reflection is False  # env over default
    assert c.engine.max_batch == 32 and c.engine.lanes == 3 and c.sessions.ttl_seconds == 1.5
    assert c.limits.max_chars == ServiceConfig().limits.max_chars  # untouched fields keep their defaults


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {"CHARLM_PORT": "abc"}, "CHARLM_PORT"),
    ([], {"CHARLM_LOG_FORMAT": "xml"}, "CHARLM_LOG_FORMAT"),
    (["--max-streams", "0"], {}, "max_streams"),
    ([], {"CHARLM_LANES": "-1"}, "lanes: must be >= 0"),
    (["--lane-fill", "0"], {}, "lane_fill: must be >= 1"),
    (["--provider", "tpu"], {}, "--provider"),
    (["--ort-prefill-spinning", "maybe"], {}, "--ort-prefill-spinning: expected true/false, got 'maybe'"),
    ([], {"CHARLM_REFLECTION": "maybe"}, "CHARLM_REFLECTION='maybe': expected true/false"),
])
def test_bad_settings_are_named(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str],
                                message: str) -> None:
    with pytest.raises(SystemExit) as e:
        build_config(argv, env)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_help_documents_every_option_with_its_env_var_and_an_example() -> None:
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for o in OPTIONS:
        assert o.flag in text and o.env in text
    assert "example:" in text and "charlm-serve --model-repo models" in text


def test_structured_log_lines() -> None:
    record = logging.LogRecord("service.server", logging.INFO, __file__, 1, 'serving on "%s"', ("x y",), None)
    record.port = 50051  # as passed by extra={...}
    as_json = json.loads(JsonFormatter().format(record))
    assert as_json["msg"] == 'serving on "x y"' and as_json["port"] == 50051 and as_json["level"] == "info"
    line = LogfmtFormatter().format(record)
    assert 'msg="serving on \\"x y\\""' in line and " port=50051" in line and line.startswith("ts=")
