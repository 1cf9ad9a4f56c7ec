"""One onnxruntime session per model version: providers and threads from config, raw calls on ids and states."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from service.int8_prompts import prompt_graph
from service.multistep import STEP_IDS, decode_head, step_state_name, steps_graph
from service.providers import (
    PROVIDERS,
    Providers,
    graph_run_options,
    providers,
    session_options,
    with_cuda_graphs,
)
from service.runtime_config import RuntimeConfig  # (its users import it from here, with Runtime)
from service.sampling_head import INV_TEMPERATURE, NEXT_IDS, UNIFORMS

if TYPE_CHECKING:
    from service.artifact import Artifact

log = logging.getLogger(__name__)

States = tuple[np.ndarray, ...]


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
        # the more steps a call of few rows may run; a device batch's calls all run its capacity: device_steps, any rows
        most, self.few_rows = ((config.device_steps, sys.maxsize) if self.device_batch
                               else (config.few_rows_steps, config.few_rows))  # fmt: skip
        more = most > config.decode_steps > 1
        self.few_rows_steps = few = most if more else config.decode_steps
        self.step_counts = tuple(sorted({1, self.decode_steps, few}))  # the calls' steps: 1, and those of several
        self._decode_graphs = {k: (steps_graph(artifact, graph, k) if k > 1 else graph).SerializeToString()
                               for k in self.step_counts}  # fmt: skip
        try:
            self._decode_sessions()
        except Exception as e:  # (onnxruntime's own error types) e.g. a graph not wholly on the CUDA provider
            if not self.cuda_graphs:
                raise
            self.drop_cuda_graphs(e)
        if not (self.device_batch and config.cuda_graphs):  # (kept to recreate the sessions: drop_cuda_graphs)
            self._decode_graphs = {}
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

    def steps_for(self, rows: int) -> int:
        """Steps a decode call of ``rows`` rows runs when it runs several (``few_rows_steps`` up to ``few_rows``)."""
        return self.few_rows_steps if rows <= self.few_rows else self.decode_steps

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
        return self._bind(self._decoders[1][lane], inputs, {**outputs, NEXT_IDS: ids_out})

    def bind_steps(self, ids: np.ndarray, states: States, states_out: States, step_states: Sequence[States],
                   uniforms: np.ndarray, inv_temperature: np.ndarray, ids_out: np.ndarray, step_ids: np.ndarray,
                   lane: bool = False) -> Callable[[], None]:  # fmt: skip
        """A call of K chained steps through the sampling head (service/multistep.py; K one of ``step_counts``):
        from ids (B, 1), states and ``uniforms`` (B, K) (column j draws step j), into the states after the last
        step, ``step_states`` (the K - 1 earlier steps' states), ``step_ids`` (B, K) and ``ids_out`` (B, 1) (= the
        last column). No logits. ``lane``: on the single-threaded session, as in ``bind_decoder``."""
        k = step_ids.shape[1]
        if k < 2 or k not in self.step_counts or len(step_states) != k - 1 or uniforms.shape[1] != k:
            raise ValueError(f"{self.model}: a call of {k} steps ({len(step_states)} step states); this runtime "
                             f"runs {', '.join(map(str, self.step_counts))}")  # fmt: skip
        inputs, outputs = self._io(ids, states, None, states_out)
        inputs.update({UNIFORMS: uniforms, INV_TEMPERATURE: inv_temperature})
        outputs.update({NEXT_IDS: ids_out, STEP_IDS: step_ids})
        for j, arrays in enumerate(step_states, start=1):
            outputs.update((step_state_name(o, j), a) for o, a in zip(self.state_outputs, arrays, strict=True))
        return self._bind(self._decoders[k][lane], inputs, outputs)

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

    def decoder_session(self, steps: int, lane: bool) -> ort.InferenceSession:
        """The session of decode calls of ``steps`` steps (one of ``step_counts``), on all threads or (``lane``)
        on the caller's."""
        return self._decoders[steps][lane]

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
        """The decode sessions of every call's steps (``step_counts``) from ``_decode_graphs``."""
        names = with_cuda_graphs(self._providers) if self.cuda_graphs else self._providers
        self._decoders = {k: self._sessions(g, names) for k, g in self._decode_graphs.items()}

    def _sessions(self, graph: bytes, names: Providers) -> tuple[ort.InferenceSession, ...]:
        """A decoding session of ``graph`` on onnxruntime's threads, and one on the calling thread alone for an
        engine lane stepping beside others (service/lane.py), so that calls from several lanes run side by side
        instead of sharing (and waiting for) one pool of threads; on CUDA the same session twice."""
        config = self._config
        shared = ort.InferenceSession(graph, session_options(config, config.spinning), providers=names)
        if self.provider != "cpu":
            return shared, shared
        return shared, ort.InferenceSession(graph, session_options(self._one_thread, False), providers=names)


# On a GPU every call runs this many rows (EngineConfig.max_batch's default), so that a row's results do not
# depend on how many others share its call; a batch of more rows than this may still differ (docs/service.md).
DEVICE_ROWS = 256


def probe_min_batch(rt: Runtime) -> int:
    """1, or 2 when a row's outputs differ bitwise between batch 1 and larger batches.

    onnxruntime's CPU GEMM takes a matrix-vector path at batch 1 whose rounding differs from the
    batched path (seen with the RNN operator; LSTM and GRU agree, and batches 2..256 agree with each
    other). Where it differs, ``run`` and the engine pad single-row calls to two rows, so that a seeded
    stream samples the same text alone or batched.
    """
    rt.min_batch = 1  # (rt.run pads to it)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, rt.vocab_size, (9, 2), dtype=np.int64)
    states = tuple(np.tanh(rng.standard_normal((rt.layers, 9, rt.hidden))).astype(np.float32)  # (a model's range)
                   for _ in rt.state_inputs)  # fmt: skip
    row0 = [rt.run(ids[:b], tuple(s[:, :b] for s in states))[0][0] for b in (1, 2, 9)]
    if rt.provider != "cpu" and not all(np.array_equal(row0[0], r) for r in row0[1:]):
        # (cuBLAS and cuDNN pick their kernels by shape) one shape for every call costs a GPU little: its time
        # per call hardly grows with the rows
        log.info("%s: every call is padded to %d rows (batch-invariant results)", rt.model, DEVICE_ROWS)
        return DEVICE_ROWS
    if not np.array_equal(row0[1], row0[2]):
        log.warning("%s: results differ between batch sizes at float precision; seeded streams may "
                    "sample differently alone and batched", rt.model)  # fmt: skip
    if np.array_equal(row0[0], row0[1]):
        return 1
    log.info("%s: batch-1 calls are padded to 2 rows (batch-invariant results)", rt.model)
    return 2
