"""How onnxruntime runs a model: the runtime's part of the server's configuration (service/runtime.py)."""

from __future__ import annotations

from dataclasses import dataclass

from service.providers import PROVIDERS


@dataclass(frozen=True)
class RuntimeConfig:
    """How onnxruntime runs a model."""

    provider: str = "cpu"  # "cpu" | "cuda" (falls back to CPU with a warning when CUDA is missing)
    # Threads inside one operator; 0 = the cores this process may use (service/cores.py). onnxruntime's own 0
    # counts the host's cores and ignores a container's CPU quota: 2 allowed of 64 would start 64 threads.
    intra_op_threads: int = 0
    inter_op_threads: int = 1  # threads across operators (the graph is a chain: 1 is enough)
    # Whether onnxruntime's idle intra-op threads spin within a call for the next operator or time step (they stop
    # when the call returns: session.force_spinning_stop). Decode steps (`spinning`; a lane stepping alone's only):
    # no faster on 2 cores, and without the stop 2-3x slower (the threads took the event loop's cores). Prompt
    # calls (`prefill_spinning`): a 16-character prompt's call ~25% shorter, as they wake at every time step.
    spinning: bool = False
    prefill_spinning: bool = True
    spin_between_calls: bool = False  # onnxruntime's own default when spinning (what bench/ measures raw)
    # Decode steps one call may run when the batch's characters may wait that long (service/multistep.py;
    # the policy, with EngineConfig.steps_wait_ms: Decoding._steps in service/decoding.py); 1 = a step per call
    decode_steps: int = 8
    # ...and calls of at most `few_rows` rows, this many (0 = decode_steps): a lane of 32 rows spends ~7% of its
    # time in Python around its calls, which 16 steps halve; past 64 rows a lane's 16 steps ran 0.8-0.9x as fast
    # as 8 (their states outgrow the caches). Unused where decode_steps is 1.
    few_rows_steps: int = 16
    few_rows: int = 64
    # ...and a device batch's calls (CUDA: each runs the batch's whole capacity), this many of any rows (0 =
    # decode_steps); the characters' wait still picks 16, 8 or 1 a call. On an H200 servers that ran 16 steps only
    # served 64 and 256 streams 1.16-1.30x the chars/s of 8, but one stream 0.47x (it could not wait for 16).
    device_steps: int = 16
    # onnxruntime's CPU memory arena: it keeps its blocks at the most any call needed, and under 256 streams the RSS
    # crept for minutes (a 300 s soak +7.0%); without it the same soak +2.3%, ~20 MiB lower, as fast at 64 and 256
    # streams, one stream perhaps 3-9% slower (docs/performance.md). On CUDA the CPU side's only.
    cpu_mem_arena: bool = False
    # Where a decode batch keeps its states between calls (service/device.py): "auto" = on the device where the
    # decoder runs on one (CUDA), else in numpy arrays; "on" = in onnxruntime's own values on any provider
    # (every call then runs the batch's whole capacity); "off" = numpy arrays, copied in and out at every call.
    device_batch: str = "auto"
    # With a device batch on CUDA: each decode call's kernels captured once as a CUDA graph and replayed
    # (falls back to plain calls with a warning where onnxruntime cannot capture them)
    cuda_graphs: bool = True
    # Decode steps' matrix products: fp32 as exported, int8 (service/quantized.py), or auto = int8 on the CPU
    decode_precision: str = "auto"  # provider where the graph allows it, else fp32 (multistep.decode_head)
    # Prompt calls' LSTM layers: fp32 as exported, int8 (service/int8_prompts.py), or auto = int8 where decode steps
    prompt_precision: str = "auto"  # run in int8 and the graph is an LSTM's, else fp32
    # int8 prompt calls of at most this many characters in all (rows x characters) run on one thread: on the 2-core
    # VMs up to 64 as fast as on two (0.43-1.01x the time) at 0.1-0.7x the process's CPU, the second thread spinning;
    # from 8 x 16, two threads were 1.1-1.8x faster. `python -m bench.prompt_threads` measures a machine's (0 = a
    # lone row's calls only); in bursts of one-character requests, 0.84-0.97x the server's CPU a request at 64.
    small_prompt_chars: int = 64

    def __post_init__(self) -> None:
        precisions = ("auto", "fp32", "int8")
        choices = {"provider": sorted(PROVIDERS), "device_batch": ("auto", "on", "off"),
                   "decode_precision": precisions, "prompt_precision": precisions}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("decode_precision", "prompt_precision"):
            if getattr(self, name) == "int8" and self.provider != "cpu":
                raise ValueError(f"{name}: int8 runs on the cpu provider only")
        for name, low in (("decode_steps", 1), ("few_rows_steps", 0), ("device_steps", 0)):
            if not low <= getattr(self, name) <= 64:
                raise ValueError(f"{name}: must be {low}..64, got {getattr(self, name)}")
        for name in ("intra_op_threads", "inter_op_threads", "small_prompt_chars", "few_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
