"""The sampling head appended to the decode graph: the same draws as the numpy sampler, row by row."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.runtime import Runtime
from service.sampling import BatchParams, log_softmax, sample
from service.sampling_head import INV_TEMPERATURE, NEXT_IDS, UNIFORMS, add_sampling_head
from service.types import Sampling

V = 84


def head_session(opset: int) -> ort.InferenceSession:
    """A graph whose logits are its input (B, 1, V), with the head added."""
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, V])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, V])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    headed = add_sampling_head(model, "logits", V)
    onnx.checker.check_model(headed, full_check=True)
    return ort.InferenceSession(headed.SerializeToString(), providers=["CPUExecutionProvider"])


def head_draw(sess: ort.InferenceSession, logits: np.ndarray, u: np.ndarray, t: np.ndarray) -> np.ndarray:
    feed = {"x": logits[:, None, :], UNIFORMS: u[:, None].astype(np.float32),
            INV_TEMPERATURE: (1 / t)[:, None].astype(np.float32)}  # fmt: skip
    ids = sess.run([NEXT_IDS], feed)[0]
    assert ids.shape == (len(logits), 1) and ids.dtype == np.int64
    return ids[:, 0]


def test_head_draws_what_the_numpy_sampler_draws() -> None:
    rng = np.random.default_rng(0)
    n = 4096
    logits = (rng.standard_normal((n, V)) * 3).astype(np.float32)
    u, t = rng.random(n), rng.choice([0.3, 0.7, 1.0, 1.5, 4.0], n)
    expected = sample(logits, BatchParams.of([Sampling(temperature=float(x)) for x in t]), u)
    for opset in (17, 18):  # ReduceMax's axes: an attribute up to 17, an input from 18
        got = head_draw(head_session(opset), logits, u, t)
        assert got.min() >= 0 and got.max() < V
        # float32 vs float64: a draw may differ only where u lies within rounding of a CDF step
        assert (got == expected).mean() > 0.995 and np.abs(got - expected)[got != expected].max(initial=0) <= 1


def test_head_frequencies_follow_the_softmax() -> None:
    rng = np.random.default_rng(1)
    row = (rng.standard_normal(V) * 2).astype(np.float32)
    n, t = 40_000, 0.8
    ids = head_draw(head_session(17), np.repeat(row[None], n, axis=0), rng.random(n), np.full(n, t))
    p = np.exp(log_softmax(row[None] / t))[0]
    freq = np.bincount(ids, minlength=V) / n
    assert np.abs(freq - p).max() < 5 * np.sqrt(p.max() / n)  # within 5 standard errors everywhere


def test_head_rows_do_not_depend_on_the_batch(tiny_runtimes: dict[str, Runtime]) -> None:
    rt = tiny_runtimes["lstm"]
    rng = np.random.default_rng(2)
    b = 64
    ids = rng.integers(0, rt.vocab_size, (b, 1), dtype=np.int64)
    states = tuple(rng.standard_normal((rt.layers, b, rt.hidden)).astype(np.float32) for _ in rt.state_inputs)
    u = rng.random((b, 1)).astype(np.float32)
    inv_t = rng.uniform(0.5, 2.0, (b, 1)).astype(np.float32)

    def run(rows: int) -> tuple[np.ndarray, np.ndarray]:
        r = max(rows, rt.min_batch)
        pad = lambda a, axis: np.ascontiguousarray(np.take(a, np.arange(r) % rows, axis=axis))  # noqa: E731
        st = tuple(pad(s[:, :rows], 1) for s in states)
        logits = np.zeros((r, 1, rt.vocab_size), np.float32)
        new = tuple(np.zeros_like(s) for s in st)
        nxt = np.zeros((r, 1), np.int64)
        rt.bind_decoder(pad(ids[:rows], 0), st, logits, new, pad(u[:rows], 0), pad(inv_t[:rows], 0), nxt)()
        return nxt[:rows, 0], logits[:rows, 0]

    full_ids, full_logits = run(b)
    for rows in (1, 3, 17):
        part_ids, part_logits = run(rows)
        assert np.array_equal(part_ids, full_ids[:rows]) and np.array_equal(part_logits, full_logits[:rows])
