"""The device batch (service/device.py) against the numpy batch, on the CPU (``device_batch="on"``).

On CUDA it keeps the states in device memory between calls; here its values are host memory, but its calls,
copies and bookkeeping are the same code, so whatever it computes must equal the numpy batch bit for bit. Where
onnxruntime has CUDA (a GPU machine), the same tests run there too: the numpy batch against the device batch with
CUDA graphs.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from fixtures.service_core import ARCHS

from service.artifact import Artifact
from service.batch import DecodeBatch, Joiner
from service.device import DeviceBatch, new_batch
from service.engine import Engine, EngineConfig
from service.runtime import Runtime, RuntimeConfig
from service.types import Chunk, GenerateParams, Sampling, SeqState
from service.vocab import Vocab

STEPS = 4
PROVIDERS = ["cpu", *(["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])]


def runtimes(artifact: Artifact, provider: str = "cpu") -> tuple[Runtime, Runtime]:
    """The numpy batch's runtime and the device batch's (on CUDA with CUDA graphs), several steps per call."""
    return tuple(Runtime(artifact, RuntimeConfig(provider, intra_op_threads=1, decode_steps=STEPS, device_batch=d))
                 for d in ("off", "on"))  # type: ignore[return-value]  # fmt: skip


def joiners(rt: Runtime, n: int, seed: int) -> list[Joiner]:
    rng = np.random.default_rng(seed)
    states = [tuple(rng.standard_normal((rt.layers, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
              for _ in range(n)]  # fmt: skip
    return [Joiner(s, int(rng.integers(rt.vocab_size)), np.zeros(rt.vocab_size, bool)) for s in states]


def assert_same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_device_batch_computes_what_the_numpy_batch_computes(tiny_artifacts: dict[str, Artifact], arch: str,
                                                             provider: str) -> None:  # fmt: skip
    plain_rt, device_rt = runtimes(tiny_artifacts[arch], provider)
    assert (plain_rt.provider, device_rt.provider) == (provider, provider)
    assert not plain_rt.device_batch and device_rt.device_batch and device_rt.cuda_graphs == (provider == "cuda")
    plain, device = new_batch(plain_rt, 6), new_batch(device_rt, 6)
    assert type(plain) is DecodeBatch and isinstance(device, DeviceBatch)
    device.prepare(True)
    device.warm()
    rng = np.random.default_rng(1)
    for b in (plain, device):
        b.rebuild([], joiners(plain_rt, 3, seed=2))
    assert_same(plain.states(), device.states())
    for _ in range(3):  # single steps: logits, the head's draws, the states after
        u, inv_t = rng.random(3, np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
        for b in (plain, device):
            b.uniforms[:3], b.inv_temperature[:3] = u, inv_t
        assert np.array_equal(plain.step(), device.step())
        assert np.array_equal(plain.ids, device.ids) and device.ids.shape == (3,)
        assert_same(plain.states(), device.states())
    plain.ids[1] = device.ids[1] = 0  # a row sampled outside the head: the next call must feed it
    # a device batch's calls run device_steps (16) or decode_steps at any rows; the numpy batch's few rows too
    # (Runtime.steps_for), on the CPU: on CUDA every call is padded to 256 rows (min_batch), more than few_rows
    rows = max(3, plain_rt.min_batch)
    choices = (16, STEPS) if rows <= plain_rt.few_rows else (STEPS,)
    assert device.step_choices == (16, STEPS) and plain.step_choices == choices and (rows > 64) == (provider == "cuda")
    with pytest.raises(ValueError, match=rf"8 steps: a call of {rows} rows runs \({', '.join(map(str, choices))}"):
        plain.use_steps(8)
    for k in (STEPS, *choices, STEPS):  # each K, and back: both K's calls are bound and read the same buffers
        u = rng.random((3, k), np.float32)
        for b in (plain, device):
            b.use_steps(k)
            b.step_uniforms[:] = u
        assert np.array_equal(plain.steps_call(), device.steps_call())
        for row in range(3):  # every step's state of every row, as a row leaving inside the call needs it
            for step in range(k):
                assert_same(plain.row_state(row, step), device.row_state(row, step))
    for b in (plain, device):  # rows leave and join: gathered on the host, sent back to the device
        b.rebuild([2, 0], joiners(plain_rt, 2, seed=3))
    assert_same(plain.states(), device.states())
    assert np.array_equal(plain.step(), device.step()) and np.array_equal(plain.ids, device.ids)
    assert_same(plain.row_state(3), device.row_state(3))


async def texts(engine: Engine, requests: list[tuple[str, GenerateParams]]) -> list[str]:
    """The requests' texts, all sent at once (batched together)."""
    await engine.start()

    async def one(prompt: str, params: GenerateParams) -> str:
        events = [e async for e in engine.generate(engine.new_state(), prompt, params)]
        return "".join(e.text for e in events if isinstance(e, Chunk))

    return list(await asyncio.gather(*(one(p, params) for p, params in requests)))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("arch", ARCHS)
async def test_an_engine_on_the_device_batch_serves_the_same_text(tiny_artifacts: dict[str, Artifact], arch: str,
                                                                  provider: str) -> None:  # fmt: skip
    """Streams of every kind of sampling, batched, several steps per call where they may: the same text."""
    samplings = [Sampling(seed=1), Sampling(temperature=0.0), Sampling(temperature=0.7, top_k=5, seed=2),
                 Sampling(top_p=0.9, seed=3), Sampling(repetition_penalty=1.3, seed=4), Sampling(seed=5)]  # fmt: skip
    requests = [("The " + "abcdef"[i], GenerateParams(s, 40 + 13 * i, ("e",) if i == 5 else (), logprobs=i == 4))
                for i, s in enumerate(samplings)]  # fmt: skip
    out = []
    for rt in runtimes(tiny_artifacts[arch], provider):
        engine = Engine(rt, Vocab(rt.vocabulary), EngineConfig(max_batch=8), rt.model)
        try:
            out.append(await texts(engine, requests))
        finally:
            await engine.close()
    assert out[0] == out[1] and all(out[0])


async def test_a_session_continues_across_device_batch_calls(tiny_artifacts: dict[str, Artifact]) -> None:
    """Two calls on one state equal one call: the state leaves the device batch and comes back."""
    rt = runtimes(tiny_artifacts["gru"])[1]
    engine = Engine(rt, Vocab(rt.vocabulary), EngineConfig(max_batch=4), rt.model)
    await engine.start()

    async def run(state: SeqState, prompt: str, chars: int) -> str:
        params = GenerateParams(Sampling(), chars)
        return "".join([e.text async for e in engine.generate(state, prompt, params) if isinstance(e, Chunk)])

    try:
        whole, split = engine.new_state(7), engine.new_state(7)
        one = await run(whole, "Once ", 60)
        two = await run(split, "Once ", 25) + await run(split, "", 35)
        assert one == two and len(one) == 60
    finally:
        await engine.close()


def test_device_batch_recovers_when_graph_capture_fails(tiny_artifacts: dict[str, Artifact],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Where onnxruntime cannot capture a decode call, the runtime drops its CUDA graphs and the calls are
    prepared again on fresh sessions (here the capture's failure is the CPU session's, made to raise once)."""
    rt = runtimes(tiny_artifacts["lstm"])[1]
    rt.cuda_graphs = True  # (as on CUDA: each prepared call asks for a graph id of its own)

    def fail(*_: object) -> None:
        raise RuntimeError("capture failed")

    broken = rt.decoder_session(1, False)
    monkeypatch.setattr(broken, "run_with_iobinding", fail)
    batch = new_batch(rt, 4)
    batch.prepare(True)
    batch.warm()
    assert not rt.cuda_graphs and rt.decoder_session(1, False) is not broken and rt.new_graph_run() is None
    batch.rebuild([], joiners(rt, 2, seed=4))
    batch.step()  # on the fresh session
    assert batch.ids.shape == (2,)


def test_cuda_graphs_keep_one_lane(tiny_artifacts: dict[str, Artifact], caplog: pytest.LogCaptureFixture) -> None:
    """Two lanes' graph captures and calls on one device broke each other (INTERNAL errors on an H200)."""
    rt = runtimes(tiny_artifacts["gru"])[1]
    rt.cuda_graphs = True  # (as on CUDA)
    engine = Engine(rt, Vocab(rt.vocabulary), EngineConfig(lanes=2), rt.model)
    assert len(engine.lanes) == 1 and "one lane with CUDA graphs, not 2" in caplog.text
    rt.cuda_graphs = False
    assert len(Engine(rt, Vocab(rt.vocabulary), EngineConfig(lanes=2), rt.model).lanes) == 2


async def test_the_step_thread_warms_its_batch_before_the_engine_starts(
        tiny_artifacts: dict[str, Artifact], monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """onnxruntime keeps a CUDA graph per thread: the captures must be the step thread's, and done before any
    request (another thread's CUDA calls during a capture could break it)."""
    warmed_in: list[str] = []
    real_warm = DeviceBatch.warm

    def warm(self: DeviceBatch) -> None:
        time.sleep(0.2)  # (a slow capture: start() must still wait for it)
        real_warm(self)
        warmed_in.append(threading.current_thread().name)

    monkeypatch.setattr(DeviceBatch, "warm", warm)
    rt = runtimes(tiny_artifacts["lstm"])[1]
    engine = Engine(rt, Vocab(rt.vocabulary), EngineConfig(max_batch=4, lanes=2), rt.model)
    try:
        await engine.start()
        assert sorted(warmed_in) == [f"charlm-step {rt.model}/{i}" for i in range(2)]
    finally:
        await engine.close()


async def test_a_paused_stream_leaves_and_rejoins_the_device_batch_mid_call(
        tiny_artifacts: dict[str, Artifact]) -> None:  # fmt: skip
    """A slow reader's stream pauses when its buffer fills (inside a several-steps call: a row leaves after a step
    of it) and comes back; its text is what an undisturbed stream samples."""
    rt = runtimes(tiny_artifacts["lstm"])[1]
    engine = Engine(rt, Vocab(rt.vocabulary), EngineConfig(max_batch=4, stream_buffer_chars=7), rt.model)
    params = GenerateParams(Sampling(seed=6), 90)
    try:
        await engine.start()
        slow = engine.generate(engine.new_state(), "The ", params)
        first = await slow.__anext__()
        while engine.lanes[0]._batch.n:  # (the buffer fills: the row leaves and the stream is held, paused)
            await asyncio.sleep(0.01)
        text = "".join(e.text for e in [first, *[e async for e in slow]] if isinstance(e, Chunk))
        assert text == (await texts(engine, [("The ", params)]))[0] and len(text) == 90
    finally:
        await engine.close()
