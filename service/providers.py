"""onnxruntime's execution providers and session options, as the runtime asks for them."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import onnxruntime as ort

from service import cores

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
Providers = list[Any]  # names, or (name, options) pairs, most preferred first


class Threads(Protocol):
    """What session options read of a RuntimeConfig (service/runtime.py, a frozen dataclass)."""

    @property
    def intra_op_threads(self) -> int: ...
    @property
    def inter_op_threads(self) -> int: ...
    @property
    def cpu_mem_arena(self) -> bool: ...
    @property
    def spin_between_calls(self) -> bool: ...


def providers(provider: str) -> Providers:
    """Execution providers to ask for, most preferred first (CPU always last, as the fallback)."""
    if provider == "cuda":
        if PROVIDERS["cuda"] in ort.get_available_providers():
            _preload_cuda()
            return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
        log.warning("CUDAExecutionProvider is not available in this onnxruntime build; using CPU")
    return [PROVIDERS["cpu"]]


def with_cuda_graphs(names: Providers) -> Providers:
    """``names`` with CUDA graphs turned on for the CUDA provider: a session then captures each call's kernels
    once per graph id and replays them (its inputs and outputs must stay at the addresses they were bound to)."""
    return [(n, {"enable_cuda_graph": "1"}) if n == PROVIDERS["cuda"] else n for n in names]


def session_options(config: Threads, spinning: bool) -> ort.SessionOptions:
    """onnxruntime session options from ``config``; threads spin within calls or not at all."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads or cores.available_cores()
    opts.inter_op_num_threads = config.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No memory plan cached per input shape: a served model meets many shapes (every batch size, every prompt
    # chunk), and each cached plan kept ~45 KB more per decode batch size with no measurable gain in speed.
    opts.enable_mem_pattern = False
    opts.enable_cpu_mem_arena = config.cpu_mem_arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if not config.spin_between_calls:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def graph_run_options(graph_id: int) -> ort.RunOptions:
    """Run options that replay (or first capture) CUDA graph ``graph_id`` of a session with CUDA graphs."""
    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


def _preload_cuda() -> None:
    """Load CUDA's and cuDNN's libraries from the nvidia-* wheels, where pip installed them: onnxruntime-gpu does
    not look there by itself (unless torch was imported first). A CUDA image's system libraries need none of it."""
    try:
        getattr(ort, "preload_dlls", lambda: None)()  # (onnxruntime >= 1.21)
    except OSError as e:  # the session's creation then says what is missing
        log.warning("could not preload CUDA libraries: %s", e)
