"""charlm-serve's configuration: flag > CHARLM_* env > default, clear errors, and a --help that explains."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import OPTIONS, build_config
from service.config import SecurityConfig, ServiceConfig
from service.logs import JsonFormatter, LogfmtFormatter
from service.runtime import RuntimeConfig
from service.server import server_options


def test_defaults_listen_on_localhost_with_the_shipped_repository() -> None:
    c = build_config([], {})
    assert c == ServiceConfig()
    assert (c.host, c.port, c.model_repo, c.metrics_port) == ("127.0.0.1", 50051, Path("models"), 9090)


def test_flag_beats_env_beats_default() -> None:
    env = {"CHARLM_PORT": "6000", "CHARLM_MAX_STREAMS": "7", "CHARLM_PROVIDER": "cuda", "CHARLM_REFLECTION": "false",
           "CHARLM_ORT_ARENA": "true", "CHARLM_ACCESS_LOG": "yes"}
    c = build_config(["--port", "7000", "--max-batch", "32", "--lanes", "3", "--session-ttl-seconds", "1.5"], env)
    assert c.port == 7000  # flag over env
    assert c.limits.max_streams == 7 and c.runtime.provider == "cuda" and c.reflection is False  # env over default
    assert c.runtime.cpu_mem_arena is True and ServiceConfig().runtime.cpu_mem_arena is False
    assert c.access_log is True and ServiceConfig().access_log is False
    assert build_config(["--device-batch", "ON"], {"CHARLM_CUDA_GRAPHS": "false"}).runtime == \
        RuntimeConfig(device_batch="on", cuda_graphs=False)  # fmt: skip
    assert build_config([], {"CHARLM_DECODE_PRECISION": "INT8"}).runtime == RuntimeConfig(decode_precision="int8")
    assert c.engine.max_batch == 32 and c.engine.lanes == 3 and c.sessions.ttl_seconds == 1.5
    assert build_config(["--idle-looks", "0"], {}).engine.idle_looks == 0 and c.engine.idle_looks == 5
    assert c.limits.max_chars == ServiceConfig().limits.max_chars  # untouched fields keep their defaults


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {"CHARLM_PORT": "abc"}, "CHARLM_PORT"),
    ([], {"CHARLM_LOG_FORMAT": "xml"}, "CHARLM_LOG_FORMAT"),
    (["--max-streams", "0"], {}, "max_streams"),
    ([], {"CHARLM_LANES": "-1"}, "lanes: must be >= 0"),
    (["--lane-fill", "-1"], {}, "lane_fill: must be >= 0"),
    ([], {"CHARLM_IDLE_LOOKS": "-1"}, "idle_looks: must be >= 0"),
    ([], {"CHARLM_ALL_THREADS_ROWS": "-3"}, "all_threads_rows: must be >= 0"),
    ([], {"CHARLM_MALLOC_ARENAS": "-2"}, "malloc_arenas: must be >= 0"),
    ([], {"CHARLM_ACCEPT_SLOTS": "-1"}, "accept_slots: must be 0..1024"),
    (["--accept-slots", "5000"], {}, "accept_slots: must be 0..1024, got 5000"),
    (["--provider", "tpu"], {}, "--provider"),
    (["--device-batch", "gpu"], {}, "--device-batch"),
    ([], {"CHARLM_DECODE_PRECISION": "fp16"}, "CHARLM_DECODE_PRECISION"),
    (["--decode-precision", "int8", "--provider", "cuda"], {}, "decode_precision: int8 runs on the cpu provider only"),
    ([], {"CHARLM_CUDA_GRAPHS": "maybe"}, "CHARLM_CUDA_GRAPHS='maybe': expected true/false"),
    (["--ort-prefill-spinning", "maybe"], {}, "--ort-prefill-spinning: expected true/false, got 'maybe'"),
    ([], {"CHARLM_REFLECTION": "maybe"}, "CHARLM_REFLECTION='maybe': expected true/false"),
    ([], {"CHARLM_PORT": "99999"}, "CHARLM_PORT='99999': port: must be 0..65535"),
    (["--port", "-1"], {}, "--port: port: must be 0..65535"),
    ([], {"CHARLM_METRICS_PORT": "70000"}, "CHARLM_METRICS_PORT='70000': metrics_port: must be 0..65535"),
    ([], {"CHARLM_METRICS_PORT": "-5"}, "CHARLM_METRICS_PORT='-5': metrics_port: must be 0..65535 (0 = any free "
                                        "port) or -1 (off), got -5"),
    ([], {"CHARLM_GRACE_SECONDS": "-1"}, "CHARLM_GRACE_SECONDS='-1': grace_seconds: must be a finite number >= 0"),
    (["--grace-seconds", "nan"], {}, "--grace-seconds: grace_seconds: must be a finite number >= 0"),
    ([], {"CHARLM_MAX_CONNECTION_AGE_SECONDS": "-3"}, "CHARLM_MAX_CONNECTION_AGE_SECONDS='-3'"),
    ([], {"CHARLM_INTRA_OP_THREADS": "-1"}, "CHARLM_INTRA_OP_THREADS='-1': intra_op_threads: must be >= 0"),
    ([], {"CHARLM_LOG_LEVEL": "verbose"}, "CHARLM_LOG_LEVEL='verbose': choose from DEBUG, INFO"),
    (["--tls-cert", "c.pem"], {}, "--tls-key / CHARLM_TLS_KEY: tls_key: TLS needs both a certificate"),
    ([], {"CHARLM_TLS_KEY": "k.pem"}, "--tls-cert / CHARLM_TLS_CERT: tls_cert: TLS needs both"),
    (["--tls-client-ca", "ca.pem"], {}, "tls_cert: client certificates (tls_client_ca) need the server's own"),
    ([], {"CHARLM_AUTH_TOKEN": "two words"}, "CHARLM_AUTH_TOKEN: auth_token: must be printable ASCII"),
])
def test_bad_settings_are_named(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str],
                                message: str) -> None:
    with pytest.raises(SystemExit) as e:
        build_config(argv, env)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err
    assert len(err.strip().splitlines()) == 1, err  # no usage burying it
    assert "two words" not in err  # a secret's value never goes into a message (it would reach the logs)


def test_names_in_any_case_and_the_security_settings() -> None:
    c = build_config(["--log-format", "JSON"], {"CHARLM_LOG_LEVEL": "info", "CHARLM_AUTH_TOKEN_FILE": "/run/tokens",
                                                "CHARLM_TLS_CERT": "s.pem", "CHARLM_TLS_KEY": "s.key"})
    assert (c.log_level, c.log_format) == ("INFO", "json")
    assert c.security == SecurityConfig(auth_token_file=Path("/run/tokens"), tls_cert=Path("s.pem"),
                                        tls_key=Path("s.key"))
    assert build_config(["--log-level", "debug"], {}).log_level == "DEBUG"
    secret = build_config([], {"CHARLM_AUTH_TOKEN": "s3cret"})
    assert secret.security.auth and "s3cret" not in repr(secret)  # config reprs may be logged
    assert build_config(["--metrics-port", "-1"], {}).metrics_port == -1  # the documented "off"


def test_max_connection_age_reaches_the_server_options() -> None:
    def options(*argv: str) -> dict[str, object]:
        return dict(server_options(build_config(list(argv), {})))

    off = options()
    assert "grpc.max_connection_age_ms" not in off and off["grpc.so_reuseport"] == 0
    aged = options("--max-connection-age-seconds", "300")
    assert aged["grpc.max_connection_age_ms"] == 300_000
    assert aged["grpc.max_connection_age_grace_ms"] == 2**31 - 1  # calls in flight run to their end
    graced = build_config([], {"CHARLM_MAX_CONNECTION_AGE_SECONDS": "0.5", "CHARLM_MAX_CONNECTION_AGE_GRACE_SECONDS":
                               "30"})
    assert dict(server_options(graced))["grpc.max_connection_age_ms"] == 500
    assert dict(server_options(graced))["grpc.max_connection_age_grace_ms"] == 30_000


def test_a_metrics_port_in_use_names_the_setting(model_repo: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "CHARLM_METRICS_PORT": str(port), "CHARLM_PORT": "0", "CHARLM_MODEL_REPO": str(model_repo)}
        out = subprocess.run([sys.executable, "-m", "service", "--log-level", "error"], capture_output=True, text=True,
                             timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"--metrics-host/--metrics-port: cannot serve /metrics on 127.0.0.1:{port}" in lines[0]


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


# Counts the process's malloc arenas (malloc_info's <heap> elements) after 6 threads, alive at once, allocated.
_ARENAS = """
import ctypes, sys, tempfile, threading
from service.cli import limit_malloc_arenas
limited = limit_malloc_arenas(int(sys.argv[1]))
alive = threading.Barrier(6)  # all six at once: an exited thread's arena would go to the next one
def work(): keep = [bytearray(100_000) for _ in range(20)]; alive.wait()  # malloc'd from this thread's arena
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w"); libc.malloc_info(0, fp); libc.fclose(fp)
    print(limited, open(f.name).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_malloc_arenas_cap_the_arenas_of_new_threads() -> None:
    def arenas(cap: int) -> tuple[str, int]:
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}  # glibc's own, unless capped here
        out = subprocess.run([sys.executable, "-c", _ARENAS, str(cap)], capture_output=True, text=True, timeout=60,
                             check=True, env=env).stdout.split()  # fmt: skip
        return out[0], int(out[1])

    assert arenas(2) == ("True", 2)  # the main arena and one that the six threads share
    limited, default = arenas(0)  # glibc's own: each new thread got an arena of its own
    assert limited == "False" and default > 2


def test_the_compose_settings_file_lists_every_option() -> None:
    from scripts.server_env import OUT, render  # (the script writes it: `python scripts/server_env.py`)

    text = OUT.read_text()
    assert text == render(), "docker/server.env is stale: run python scripts/server_env.py"
    assert all(f"# {o.env}=" in text for o in OPTIONS)
