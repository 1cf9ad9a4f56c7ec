"""The PyTorch models against the numpy reference of the equations, and BPTT against autograd and finite
differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import reference
from training.models import Architecture, CharRNN, ModelConfig

STEPS = 100


def _model(arch: Architecture, layers: int = 2, hidden: int = 16, vocab: int = 11) -> CharRNN:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(arch=arch, vocab_size=vocab, embedding_size=8, hidden_size=hidden, layers=layers))
    with torch.no_grad():  # larger weights than the default init, so the nonlinearities are really exercised
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_forward_matches_numpy_step_by_step(arch: Architecture) -> None:
    model = _model(arch)
    ref = reference.RefModel.from_torch(model)
    ids = torch.randint(0, 11, (3, STEPS), generator=torch.Generator().manual_seed(1))  # (B, T)
    state = model.init_state(3)
    ref_state = reference.zero_state(ref, 3)
    worst = 0.0
    with torch.no_grad():
        for t in range(STEPS):  # one character at a time, carrying each side's own state
            logits, state = model(ids[:, t : t + 1], state)
            ref_logits, ref_state = reference.step(ref, ids[:, t].numpy(), ref_state)
            worst = max(worst, float(np.abs(logits[:, 0].double().numpy() - ref_logits).max()))
            for i, s in enumerate(state):  # state tensors (layers, B, H) vs per-layer reference arrays
                ref_s = np.stack([layer[i] for layer in ref_state])
                worst = max(worst, float(np.abs(s.double().numpy() - ref_s).max()))
    assert worst <= 1e-5, f"{arch}: max abs difference {worst:.2e} over {STEPS} steps"


def test_whole_sequence_forward_matches_stepping() -> None:
    model = _model("lstm")
    ids = torch.randint(0, 11, (2, 30))
    with torch.no_grad():
        whole, _ = model(ids)
        state = model.init_state(2)
        steps = []
        for t in range(30):
            logits, state = model(ids[:, t : t + 1], state)
            steps.append(logits)
    assert torch.allclose(whole, torch.cat(steps, dim=1), atol=1e-5)


def _autograd(model: CharRNN, ids: torch.Tensor, targets: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model = model.double()
    model.zero_grad()
    logits, _ = model(ids)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.item(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def test_rnn_bptt_matches_autograd() -> None:
    model = _model("rnn", layers=1)
    gen = torch.Generator().manual_seed(2)
    ids, targets = torch.randint(0, 11, (4, 25), generator=gen), torch.randint(0, 11, (4, 25), generator=gen)
    ref = reference.RefModel.from_torch(model)
    loss, grads = reference.rnn_loss_and_grads(ref, ids.numpy(), targets.numpy())
    torch_loss, torch_grads = _autograd(model, ids, targets)
    assert abs(loss - torch_loss) < 1e-10
    assert set(torch_grads) == set(grads)
    for name, g in torch_grads.items():
        assert np.allclose(g.numpy(), grads[name], rtol=1e-7, atol=1e-10), name
        assert np.abs(grads[name]).max() > 0, f"{name}: gradient is all zero, nothing was checked"


def test_rnn_bptt_matches_finite_differences() -> None:
    model = _model("rnn", layers=1, hidden=8, vocab=7)
    gen = torch.Generator().manual_seed(3)
    ids, targets = torch.randint(0, 7, (2, 12), generator=gen).numpy(), torch.randint(0, 7, (2, 12), generator=gen)
    ref = reference.RefModel.from_torch(model)
    _, grads = reference.rnn_loss_and_grads(ref, ids, targets.numpy())
    rng = np.random.default_rng(4)
    eps = 1e-6
    for name, param in ref.p.items():
        for _ in range(5):  # a few random coordinates of every parameter
            idx = tuple(int(rng.integers(n)) for n in param.shape)
            if name == "embed.weight":
                idx = (int(ids[0, 0]), idx[1])  # a row that is actually used
            old = param[idx]
            param[idx] = old + eps
            up, _ = reference.rnn_loss_and_grads(ref, ids, targets.numpy())
            param[idx] = old - eps
            down, _ = reference.rnn_loss_and_grads(ref, ids, targets.numpy())
            param[idx] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - grads[name][idx]) <= 1e-6 + 1e-4 * abs(numeric), (name, idx)
