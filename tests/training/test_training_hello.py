"""Karpathy's "hello" example: a tiny model trained on "hello" predicts "ello" from "hell" greedily."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.data import Vocab
from training.models import Architecture, CharRNN
from training.trainer import make_optimizer


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_hello(arch: Architecture) -> None:
    torch.manual_seed(0)
    vocab = Vocab.from_text("hello")
    assert sorted(vocab.chars) == ["e", "h", "l", "o"]
    ids = vocab.encode("hello").unsqueeze(0)  # (1, 5)
    x, y = ids[:, :-1], ids[:, 1:]  # "hell" -> "ello"
    cfg = TrainConfig(arch=arch, layers=1, hidden_size=16, embedding_size=4, lr=0.05, weight_decay=0.0, max_steps=100)
    model = CharRNN(cfg.model_config(len(vocab)))
    optimizer = make_optimizer(model, cfg)
    start = time.perf_counter()
    for _ in range(100):
        logits, _ = model(x)  # (1, 4, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert time.perf_counter() - start < 2.0
    with torch.no_grad():
        logits, _ = model.eval()(x)
    assert vocab.decode(logits.argmax(-1)[0]) == "ello"
    # "l" is followed by "l" once and by "o" once: only the recurrent state can tell them apart
    assert loss.item() < 0.05
