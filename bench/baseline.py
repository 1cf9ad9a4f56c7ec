"""What a user would write instead of the batching server: every stream steps its own model call, one at a time.

Each of ``streams`` streams keeps its own state and draws its own characters; a round-robin loop advances one
stream by one character per call (ids (1, 1)), so the machine does the same work as the server with no
batching and no transport at all (a generous baseline: no gRPC, no Python server around it).

``unbatched_ort`` steps onnxruntime (``InferenceSession.run`` with a feed dict, what the onnxruntime docs
show); ``unbatched_torch`` steps the same architecture in PyTorch eager (training.models.CharRNN with the
artifact's shape; random weights: the time of a step does not depend on their values).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.artifact import Artifact
from service.runtime import Runtime
from service.sampling import draw_one


@dataclass(frozen=True)
class BaselineRate:
    """Aggregate characters per second of one unbatched engine."""

    engine: str  # "onnxruntime" | "pytorch-eager"
    streams: int
    chars: int
    seconds: float
    chars_per_s: float
    note: str = ""


def unbatched_ort(runtime: Runtime, streams: int, seconds: float, seed: int = 0) -> BaselineRate:
    """Round-robin single-stream onnxruntime steps with numpy sampling for about ``seconds``."""
    rng = np.random.default_rng(seed)
    sess, names = runtime.session, runtime.output_names
    states = [tuple(s[:, None] for s in runtime.zero_state()) for _ in range(streams)]  # each (layers, 1, H)
    ids = [np.array([[int(rng.integers(runtime.vocab_size))]], np.int64) for _ in range(streams)]
    chars, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or chars < streams:
        for i in range(streams):
            feed = {runtime.input_name: ids[i], **dict(zip(runtime.state_inputs, states[i], strict=True))}
            logits, *new = sess.run(names, feed)
            states[i] = tuple(new)
            ids[i] = np.array([[draw_one(logits[0, -1], 1.0, rng.random())]], np.int64)
        chars += streams
    wall = time.perf_counter() - start
    return BaselineRate("onnxruntime", streams, chars, wall, chars / wall)


def unbatched_torch(artifact: Artifact, streams: int, seconds: float, seed: int = 0) -> BaselineRate:
    """The same loop in PyTorch eager; a note instead of a rate when torch is not installed."""
    try:
        import torch

        from training.models import CharRNN, ModelConfig
    except ImportError as e:
        return BaselineRate("pytorch-eager", streams, 0, 0.0, float("nan"), f"skipped: {e}")
    info = artifact.info
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(info.architecture, info.vocab_size, info.embedding_size, info.hidden_size,
                                info.layers)).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    states = [model.init_state(1) for _ in range(streams)]
    ids = [torch.randint(info.vocab_size, (1, 1), generator=gen) for _ in range(streams)]
    chars, start = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds or chars < streams:
            for i in range(streams):
                logits, states[i] = model(ids[i], states[i])  # (1, 1, V)
                ids[i] = torch.multinomial(torch.softmax(logits[0, -1], -1), 1, generator=gen).view(1, 1)
            chars += streams
    wall = time.perf_counter() - start
    return BaselineRate("pytorch-eager", streams, chars, wall, chars / wall, f"torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, random weights of the artifact's shape")
