"""A decode batch whose states stay where the decoder runs: on a GPU, in device memory between calls.

DecodeBatch keeps its states in numpy arrays, which a CPU reads in place; on CUDA, onnxruntime copied every
state in and out at every call (1 MB each way for 256 rows of the shipped model, and 7 MB more out for the
states between the 8 steps of a several-steps call) on top of ~25 small kernels a step. Here the states, the
ids and the head's inputs and outputs are onnxruntime values allocated once on the device, bound once, and
swapped between two sets as the numpy buffers are: a call copies in only the rows' ids and uniforms (a few KB)
and out only the drawn ids (and logits for a single step). States cross only when the batch's membership
changes or a row leaves: gathered on the host through the base class's numpy buffers.

Every call runs the batch's whole capacity, so each prepared call has one shape and fixed addresses: on CUDA
it is captured once as a CUDA graph and replayed (onnxruntime's ``enable_cuda_graph``), one graph id per
prepared call. On the CPU (``--device-batch on``, for tests) the values are host memory and the calls the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort

from service.batch import Calls, DecodeBatch, Joiner
from service.multistep import STEP_IDS, step_state_name
from service.runtime import Runtime, States
from service.sampling_head import INV_TEMPERATURE, NEXT_IDS, UNIFORMS

log = logging.getLogger(__name__)

Copies = list[tuple[ort.OrtValue, np.ndarray]]  # (device value, host array of the same shape)


def new_batch(runtime: Runtime, capacity: int) -> DecodeBatch:
    """The decode batch the runtime asks for: states on its device (``Runtime.device_batch``) or in numpy."""
    return DeviceBatch(runtime, capacity) if runtime.device_batch else DecodeBatch(runtime, capacity)


class DeviceBatch(DecodeBatch):
    """DecodeBatch with its states, ids and the sampling head's values in onnxruntime values on the device."""

    def __init__(self, runtime: Runtime, capacity: int) -> None:
        super().__init__(runtime, capacity)
        rt, cap, most = runtime, self.capacity, max(runtime.step_counts)
        self.device = rt.provider  # onnxruntime's device name: "cuda" or "cpu"
        shape = (rt.layers, cap, rt.hidden)
        self._dstates = [[self._value(shape, np.float32) for _ in rt.state_inputs] for _ in range(2)]
        # the states after each step but the last of a call of the most steps (a call of fewer binds the first)
        self._dstep_states = [[self._value(shape, np.float32) for _ in rt.state_inputs] for _ in range(most - 1)]
        self._dids = [self._value((cap, 1), np.int64) for _ in range(2)]  # as _idsets: per buffer set
        self._duniforms = self._value((cap, 1), np.float32)
        self._dinv_t = self._value((cap, 1), np.float32)
        self._dlogits = self._value((cap, 1, rt.vocab_size), np.float32)
        # each several-steps call's own uniforms and drawn ids, (capacity, K)
        self._dsteps = {k: (self._value((cap, k), np.float32), self._value((cap, k), np.int64))
                        for k in rt.step_counts if k > 1}  # fmt: skip
        # which device states the host buffers hold now ("cur" or a step 1..K-1), until the next call
        self._on_host: set[int | str] = set()
        self._calls_made: dict[tuple[int, bool, int], Callable[[], None]] = {}  # (set, lane, steps): the call

    def _value(self, shape: tuple[int, ...], dtype: type) -> ort.OrtValue:
        """A zeroed onnxruntime value on the device."""
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype), self.device, 0)

    def states(self) -> States:
        """Current states of the live rows, each [layers, n, hidden] (host copies)."""
        self._fetch("cur")
        return super().states()

    def row_state(self, row: int, step: int = 0) -> States:
        """A copy of one row's state (see DecodeBatch.row_state), fetched from the device once per call."""
        self._fetch(step if 0 < step < self.steps else "cur")
        return super().row_state(row, step)

    def rebuild(self, keep: Sequence[int], joining: Sequence[Joiner]) -> None:
        """New membership, gathered on the host (DecodeBatch.rebuild) and sent to the device's other set."""
        if self.n:
            self._fetch("cur")
        super().rebuild(keep, joining)
        if self.n:
            for value, host in zip(self._dstates[self._cur], self._views(self._cur, self.capacity), strict=True):
                value.update_inplace(host)
        self._on_host = {"cur"}

    def prepare(self, run: bool) -> None:
        """Bind this batch's calls: one row count, its capacity, of every number of steps it may run (so that
        ``warm`` captures each before any request; ``run`` is ignored)."""
        self._every_call()

    def warm(self) -> None:
        """Make each call twice, so that on CUDA every graph is captured before any request. onnxruntime keeps a
        CUDA graph per thread, so this must run in the thread that will step the batch. Where onnxruntime cannot
        capture them, the runtime drops its CUDA graphs and the calls are bound again."""
        try:
            self._call_each()
        except Exception as e:  # (onnxruntime raises its own types, differing between builds)
            if not self.runtime.cuda_graphs:
                raise
            self.runtime.drop_cuda_graphs(e)
            self._bound.clear()
            self._calls_made.clear()
            self._call_each()

    def _every_call(self) -> Calls:
        """The calls of the capacity's rows, of every number of steps (bound on first use)."""
        return self._calls_for(self.capacity, *self._steps_of(self.capacity)[1])

    def _call_each(self) -> None:
        calls = self._every_call()
        for k in calls:
            for which in (0, 1, 0, 1):
                calls[k][False][which]()

    def _rows_for(self, n: int) -> int:
        """Every call runs the whole capacity: one shape, fixed addresses (a CUDA graph per prepared call)."""
        return self.capacity if n else 0

    def _fetch(self, which: int | str) -> None:
        """Copy device states into the host buffers: the current set ("cur") or step ``which``'s."""
        if which in self._on_host:
            return
        values = self._dstates[self._cur] if which == "cur" else self._dstep_states[int(which) - 1]
        bufs = None if which == "cur" else self._step_bufs[int(which) - 1]
        for value, host in zip(values, self._views(self._cur, self.capacity, bufs), strict=True):
            np.copyto(host, value.numpy())
        self._on_host.add(which)

    def _bind(self, which: int, lane: bool) -> Callable[[], None]:
        """One decode step reading set ``which``'s values and writing the other's (see DecodeBatch._bind)."""
        rt, cap = self.runtime, self.capacity
        inputs = {UNIFORMS: self._duniforms, INV_TEMPERATURE: self._dinv_t}
        outputs = {rt.logits_name: self._dlogits}
        uploads = [(self._duniforms, self.uniforms.reshape(cap, 1))]
        downloads = [(self._dlogits, self._logits.reshape(cap, 1, -1))]
        return self._call(which, lane, 1, inputs, outputs, uploads, downloads)

    def _bind_steps(self, which: int, lane: bool, k: int) -> Callable[[], None]:
        """``k`` decode steps in one call (see DecodeBatch._bind_steps): one of the batch's ``step_choices``."""
        rt, cap = self.runtime, self.capacity
        uniforms, ids = self._dsteps[k]
        inputs = {UNIFORMS: uniforms, INV_TEMPERATURE: self._dinv_t}
        outputs = {STEP_IDS: ids}
        for j, values in enumerate(self._dstep_states[: k - 1], start=1):
            outputs.update((step_state_name(o, j), v) for o, v in zip(rt.state_outputs, values, strict=True))
        # (the host's (rows, K) views, as step_uniforms and step_ids give them, of buffers sized for the most K)
        uploads = [(uniforms, self._step_uniforms[: cap * k].reshape(cap, k))]
        downloads = [(ids, self._step_ids[: cap * k].reshape(cap, k))]
        return self._call(which, lane, k, inputs, outputs, uploads, downloads)

    def _call(self, which: int, lane: bool, steps: int, inputs: dict[str, ort.OrtValue],
              outputs: dict[str, ort.OrtValue], uploads: Copies, downloads: Copies) -> Callable[[], None]:  # fmt: skip
        """A prepared call of ``steps`` steps from set ``which`` to the other: the ids, the states and the inverse
        temperatures added to the kind's own values; the host's ids, uniforms and temperatures copied in before it,
        the drawn ids and the kind's outputs copied out after it."""
        lane = lane and self.device == "cpu"  # (on CUDA one session: a lane's call is the same call)
        if (which, lane, steps) in self._calls_made:
            return self._calls_made[which, lane, steps]
        rt, cap, other = self.runtime, self.capacity, 1 - which
        inputs = {rt.input_name: self._dids[which], **inputs}
        inputs.update(zip(rt.state_inputs, self._dstates[which], strict=True))
        outputs = {NEXT_IDS: self._dids[other], **outputs}
        outputs.update(zip(rt.state_outputs, self._dstates[other], strict=True))
        ids = [(self._dids[w], self._idsets[w][:cap].reshape(cap, 1)) for w in (which, other)]
        uploads = [ids[0], (self._dinv_t, self.inv_temperature.reshape(cap, 1)), *uploads]
        downloads = [ids[1], *downloads]
        session = rt.decoder_session(steps, lane)
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        run_options = rt.new_graph_run()

        def call() -> None:
            # No stream race: onnxruntime's CUDA copy into a value syncs the default stream after its cudaMemcpy (a
            # pageable copy may return before it lands), a run ends with its stream synced, and a copy out returns
            # once it is done.
            for value, host in uploads:
                value.update_inplace(host)
            session.run_with_iobinding(binding, run_options)
            for value, host in downloads:
                np.copyto(host, value.numpy())
            self._on_host.clear()

        self._calls_made[which, lane, steps] = call
        return call

