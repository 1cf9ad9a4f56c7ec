"""Loss of a model over a whole text, with the hidden state carried through it, and local sampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.data import Vocab, eval_streams
from training.models import CharRNN, detach_state


@torch.no_grad()
def evaluate(model: CharRNN, ids: torch.Tensor, streams: int = 64, chunk: int = 256) -> float:
    """Mean loss in nats/char over every next-character prediction of ``ids`` (N-1 of them).

    The text is read as ``streams`` contiguous pieces in parallel; each piece starts from a zero state and
    carries it to its end, so only the first few characters of each piece lack context.
    """
    if len(ids) < 2:  # one character predicts nothing: there would be no loss to average
        raise ValueError(f"text of {len(ids)} character(s): at least 2 are needed to score a prediction")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = eval_streams(ids, streams)  # (S, L) each
    state = model.init_state(x.shape[0], device)
    total, count = 0.0, 0
    for start in range(0, x.shape[1], chunk):
        xb = x[:, start : start + chunk].to(device)
        yb = y[:, start : start + chunk].to(device)
        logits, state = model(xb, state)  # (S, C, V)
        total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), ignore_index=-100, reduction="sum").item()
        count += int((yb != -100).sum())
        state = detach_state(state)
    model.train(was_training)
    return total / count


def bits(nats: float) -> float:
    """nats/char -> bits/char."""
    return nats / math.log(2)


@torch.no_grad()
def sample(model: CharRNN, vocab: Vocab, prime: str, length: int, temperature: float = 1.0, top_k: int = 0,
           seed: int | None = None) -> str:
    """``length`` characters continuing ``prime`` (temperature 0 = greedy; top_k 0 = all characters)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k < 0 or length < 0:
        raise ValueError("top_k and length must be >= 0")
    if not prime:
        raise ValueError("prime: needs at least one character (the model has no start-of-text symbol)")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()  # a fresh random seed
    else:
        gen.manual_seed(seed)
    ids = vocab.encode(prime, source="prime").to(device).unsqueeze(0)  # (1, P)
    logits, state = model(ids)  # consume the prime; its last logits predict the first new character
    out = []
    for _ in range(length):
        last = logits[0, -1].float().cpu()  # (V,)
        if temperature == 0:
            nxt = int(last.argmax())
        else:
            last = last / temperature
            if 0 < top_k < last.numel():
                kth = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < kth, float("-inf"))  # keep the k most likely characters
            nxt = int(torch.multinomial(torch.softmax(last, -1), 1, generator=gen))
        out.append(nxt)
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    return vocab.decode(out)
