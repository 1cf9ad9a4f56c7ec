"""One onnxruntime session per model version: providers and threads from config, raw calls on ids and states."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from service.int8_prompts import prompt_graph
from service.multistep import STEP_IDS, decode_head, step_state_name, steps_graph
from service.providers import (
    PROVIDERS,
    Providers,
    graph_run_options,
    probe_min_batch,
    providers,
    session_options,
    with_cuda_graphs,
)
from service.sampling_head import INV_TEMPERATURE, NEXT_IDS, UNIFORMS

if TYPE_CHECKING:
    from service.artifact import Artifact

log = logging.getLogger(__name__)

States = tuple[np.ndarray, ...]


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
        if not 1 <= self.decode_steps <= 64:
            raise ValueError(f"decode_steps: must be 1..64, got {self.decode_steps}")
        for name in ("intra_op_threads", "inter_op_threads", "small_prompt_chars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")


class Runtime:
    """An onnxruntime session over one artifact; ``run`` maps ids (B, T) and states to logits and states."""

    def __init__(self, artifact: Artifact, config: RuntimeConfig = RuntimeConfig()) -> None:
        info = artifact.info
        self.model = f"{info.name}:{info.version}"
        self.vocabulary: str = info.vocabulary
        self.vocab_size, self.layers, self.hidden = int(info.vocab_size), int(info.layers), int(info.hidden_size)
        self.input_name, self.logits_name = str(info.input_name), str(info.logits_name)
        self.state_inputs = tuple(s.input for s in info.states)
        self.state_outputs = tuple(s.output for s in info.states)
        self.output_names = [self.logits_name, *self.state_outputs]
        names = providers(config.provider)
        # prompts and plain calls (`run`, `bind`): the artifact's graph as it is, or its int8 prompt graph (below)
        opts = session_options(config, config.prefill_spinning)
        self.threads: int = opts.intra_op_num_threads  # onnxruntime's threads of a call on all of them
        self.session = ort.InferenceSession(str(artifact.onnx_path), opts, providers=names)
        # One such call at a time: each uses all of onnxruntime's threads already, and with calls from several
        # engine lanes at once the server's memory kept growing (a 300 s soak: +16.6% after warm-up, +3.9% with
        # this lock, flat from the 7th round; docs/performance.md).
        self.prompt_lock = threading.Lock()
        self._providers, self._config = names, config
        self._one_thread = replace(config, intra_op_threads=1, inter_op_threads=1)
        self.provider = "cuda" if PROVIDERS["cuda"] in self.session.get_providers() else "cpu"
        # decode batches' states in onnxruntime's values on the device (service/device.py), and CUDA graphs there
        self.device_batch = config.device_batch == "on" or (config.device_batch == "auto" and self.provider != "cpu")
        self.cuda_graphs = self.device_batch and self.provider == "cuda" and config.cuda_graphs
        self._graph_ids = 0  # handed out by new_graph_run: each prepared device call replays a graph of its own
        # decode steps (`bind_decoder`): the graph with a sampling head (service/sampling_head.py) in fp32 or int8,
        # and the same unrolled to several steps per call (service/multistep.py)
        self.decode_precision, graph = decode_head(artifact, config.decode_precision, self.provider)
        self.prompt_precision, self.prompt_graph = prompt_graph(artifact, config, self.decode_precision, self.provider)
        self.small_session = self.session  # one-row and small prompt calls (`run`, `bind`): see `session_for`
        self.small_prompt_chars = config.small_prompt_chars
        if self.prompt_precision == "int8":  # (the artifact's session above told where calls run)
            self.session = ort.InferenceSession(self.prompt_graph, opts, providers=names)
            # One row on the fused int8 LSTM gains nothing from a second thread (its steps are sequential, each
            # product one row) and waking it costs: a lone 16-char prompt after 2 ms idle took 349 µs on one
            # thread against 864 µs on two spinning (docs/performance-history.md, the twenty-second pass); nor
            # do a few rows (small_prompt_chars).
            self.small_session = ort.InferenceSession(self.prompt_graph, session_options(self._one_thread, False),
                                                      providers=names)  # fmt: skip
        self.decode_steps = config.decode_steps
        steps = steps_graph(artifact, graph, self.decode_steps) if self.decode_steps > 1 else None
        self._decode_graphs = (graph.SerializeToString(), steps.SerializeToString() if steps else b"")
        try:
            self._decode_sessions()
        except Exception as e:  # (onnxruntime's own error types) e.g. a graph not wholly on the CUDA provider
            if not self.cuda_graphs:
                raise
            self.drop_cuda_graphs(e)
        if not (self.device_batch and config.cuda_graphs):  # (kept to recreate the sessions: drop_cuda_graphs)
            self._decode_graphs = (b"", b"")
        if config.provider == "cuda" and self.provider != "cuda":
            log.warning("%s: CUDA was asked for but onnxruntime could not use it; running on CPU", self.model)
        # Allocating a fresh state's arrays showed as ~1/3 of charlm's own time on the event loop per request
        # under load (py-spy, docs/performance.md), so every fresh state shares these.
        self._zero = tuple(np.zeros((self.layers, self.hidden), np.float32) for _ in self.state_inputs)
        for a in self._zero:
            a.flags.writeable = False
        self.min_batch = probe_min_batch(self)  # the smallest batch a call runs with (see there)

    def zero_state(self) -> States:
        """A fresh state: one zero [layers, hidden] array per state tensor, shared by every fresh state and
        read-only (a state's arrays are replaced, never written)."""
        return self._zero

    def lane_prompts(self) -> ort.InferenceSession | None:
        """A session of the artifact's graph on the calling thread alone, for one engine lane's prompt calls made
        while other lanes work (``run``'s ``session``); None on CUDA, where an engine has one lane."""
        if self.provider != "cpu":
            return None
        opts = session_options(self._one_thread, False)
        return ort.InferenceSession(self.prompt_graph, opts, providers=self._providers)

    def prompt_session(self, graph: bytes) -> ort.InferenceSession:
        """A session of a graph derived from ``prompt_graph``, made as ``session`` is (providers, prompt options)."""
        return ort.InferenceSession(graph, session_options(self._config, self._config.prefill_spinning),
                                    providers=self._providers)  # fmt: skip

    def run(self, ids: np.ndarray, states: States,
            session: ort.InferenceSession | None = None) -> tuple[np.ndarray, States]:  # fmt: skip
        """ids int64 (B, T), states each (layers, B, hidden) -> logits float32 (B, T, V), new states. On all of
        onnxruntime's threads (one row or a few characters: ``small_session``), or on ``session`` (one of
        ``lane_prompts``, its caller's own)."""
        b = ids.shape[0]
        if b < self.min_batch:  # see probe_min_batch: pad so that results do not depend on the batch size
            pad = self.min_batch - b  # (copies of the first row; every row keeps its own results)
            ids = np.concatenate((ids, np.repeat(ids[:1], pad, axis=0)))
            states = tuple(np.concatenate((s, np.repeat(s[:, :1], pad, axis=1)), axis=1) for s in states)
        feed = dict(zip(self.state_inputs, (np.ascontiguousarray(s, dtype=np.float32) for s in states), strict=True))
        feed[self.input_name] = np.ascontiguousarray(ids, dtype=np.int64)
        if session is not None:
            logits, *new = session.run(self.output_names, feed)
        else:
            with self.prompt_lock:
                logits, *new = self.session_for(ids).run(self.output_names, feed)
        return logits[:b], tuple(s[:, :b] for s in new)

    def bind(self, ids: np.ndarray, states: States, logits_out: np.ndarray, states_out: States) -> Callable[[], None]:
        """A call that runs ids/states into the preallocated outputs, with no per-call conversion.

        All arrays must be C-contiguous (the call holds them: they live as long as it); ids (B, T) with
        B >= ``min_batch``, logits_out (B, T, V), states (layers, B, hidden). Saves ~40 µs a call over ``run``.
        """
        return self._bind(self.session_for(ids), *self._io(ids, states, logits_out, states_out))

    def session_for(self, ids: np.ndarray) -> ort.InferenceSession:
        """The session of a prompt call of ``ids`` (B, T), padded: ``small_session`` for one row or at most
        ``small_prompt_chars`` characters in all, else ``session``. Either gives the same bits (tested)."""
        return self.small_session if ids.shape[0] == 1 or ids.size <= self.small_prompt_chars else self.session

    def bind_decoder(self, ids: np.ndarray, states: States, logits_out: np.ndarray, states_out: States,
                     uniforms: np.ndarray, inv_temperature: np.ndarray,
                     ids_out: np.ndarray, lane: bool = False) -> Callable[[], None]:  # fmt: skip
        """As ``bind``, through the sampling head: also draws each row's next id into ``ids_out`` (B, 1) int64,
        from ``uniforms`` and ``inv_temperature`` (each (B, 1) float32) read at every call. ``lane``: on the
        single-threaded decoder (for calls made side by side from several threads)."""
        inputs, outputs = self._io(ids, states, logits_out, states_out)
        inputs.update({UNIFORMS: uniforms, INV_TEMPERATURE: inv_temperature})
        return self._bind(self.lane_decoder if lane else self.decoder, inputs, {**outputs, NEXT_IDS: ids_out})

    def bind_steps(self, ids: np.ndarray, states: States, states_out: States, step_states: Sequence[States],
                   uniforms: np.ndarray, inv_temperature: np.ndarray, ids_out: np.ndarray, step_ids: np.ndarray,
                   lane: bool = False) -> Callable[[], None]:  # fmt: skip
        """A call of ``decode_steps`` (K) chained steps through the sampling head (service/multistep.py): from
        ids (B, 1), states and ``uniforms`` (B, K) (column j draws step j), into the states after the last step,
        ``step_states`` (the K - 1 earlier steps' states), ``step_ids`` (B, K) and ``ids_out`` (B, 1) (= the last
        column). No logits. ``lane``: on the single-threaded session, as in ``bind_decoder``."""
        k = self.decode_steps
        if k < 2 or len(step_states) != k - 1:
            raise ValueError(f"{self.model}: {len(step_states)} step states for {k} decode steps")
        inputs, outputs = self._io(ids, states, None, states_out)
        inputs.update({UNIFORMS: uniforms, INV_TEMPERATURE: inv_temperature})
        outputs.update({NEXT_IDS: ids_out, STEP_IDS: step_ids})
        for j, arrays in enumerate(step_states, start=1):
            outputs.update((step_state_name(o, j), a) for o, a in zip(self.state_outputs, arrays, strict=True))
        return self._bind(self.steps_lane_decoder if lane else self.steps_decoder, inputs, outputs)

    def _io(self, ids: np.ndarray, states: States, logits_out: np.ndarray | None,
            states_out: States) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
        """The graph's input and output names, each with its array (no logits when ``logits_out`` is None)."""
        inputs = {self.input_name: ids, **dict(zip(self.state_inputs, states, strict=True))}
        outputs = dict(zip(self.state_outputs, states_out, strict=True))
        if logits_out is not None:
            outputs[self.logits_name] = logits_out
        return inputs, outputs

    def _bind(self, session: ort.InferenceSession, inputs: dict[str, np.ndarray],
              outputs: dict[str, np.ndarray]) -> Callable[[], None]:  # fmt: skip
        """A call of ``session`` that reads and writes the given arrays in place."""
        binding = session.io_binding()
        for name, a in inputs.items():
            binding.bind_cpu_input(name, a)
        for name, out in outputs.items():
            binding.bind_output(name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)

        def call(_arrays: object = (inputs, outputs)) -> None:  # holds the arrays: the binding has their addresses
            session.run_with_iobinding(binding)

        if self.provider == "cpu":
            return call

        def rebound_call(_arrays: object = (inputs, outputs)) -> None:
            # On a device, onnxruntime copies a CPU input when it is bound, not at each run: every call would read
            # the inputs as they were when bound (on CUDA, the same state and ids at every step), so bind again.
            for name, a in inputs.items():
                binding.bind_cpu_input(name, a)
            session.run_with_iobinding(binding)

        return rebound_call

    def decoder_session(self, steps: bool, lane: bool) -> ort.InferenceSession:
        """The session of single-step or several-step decode calls, on all threads or (``lane``) on the caller's."""
        return (self.steps_lane_decoder if lane else self.steps_decoder) if steps else \
            (self.lane_decoder if lane else self.decoder)  # fmt: skip

    def new_graph_run(self) -> ort.RunOptions | None:
        """Run options for one prepared device call: a CUDA graph id of its own (None without CUDA graphs)."""
        if not self.cuda_graphs:
            return None
        self._graph_ids += 1
        return graph_run_options(self._graph_ids)

    def drop_cuda_graphs(self, error: BaseException) -> None:
        """Recreate the decode sessions without CUDA graphs, after ``error`` from a capture (calls prepared on the
        old sessions must be prepared again)."""
        log.warning("%s: CUDA graphs could not be used (%s); decoding without them", self.model, error)
        self.cuda_graphs = False
        self._decode_sessions()

    def _decode_sessions(self) -> None:
        """The decode sessions (single-step, and several steps when ``decode_steps`` > 1) from ``_decode_graphs``."""
        names = with_cuda_graphs(self._providers) if self.cuda_graphs else self._providers
        graph, steps = self._decode_graphs
        self.decoder, self.lane_decoder = self._sessions(graph, names)
        single = self.decoder, self.lane_decoder  # (decode_steps 1: no sessions of several steps)
        self.steps_decoder, self.steps_lane_decoder = self._sessions(steps, names) if steps else single

    def _sessions(self, graph: bytes, names: Providers) -> tuple[ort.InferenceSession, ...]:
        """A decoding session of ``graph`` on onnxruntime's threads, and one on the calling thread alone for an
        engine lane stepping beside others (service/lane.py), so that calls from several lanes run side by side
        instead of sharing (and waiting for) one pool of threads; on CUDA the same session twice."""
        config = self._config
        shared = ort.InferenceSession(graph, session_options(config, config.spinning), providers=names)
        if self.provider != "cpu":
            return shared, shared
        return shared, ort.InferenceSession(graph, session_options(self._one_thread, False), providers=names)
