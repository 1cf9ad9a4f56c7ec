"""A plain numpy reference of the model equations (float64), used to check the PyTorch models.

Forward for the vanilla RNN, LSTM and GRU; forward plus backpropagation through time for the vanilla RNN.
Weights are taken from a CharRNN state_dict, so both sides compute with exactly the same numbers. Gate order
follows PyTorch: LSTM [i f g o], GRU [r z n].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.models import CharRNN

Array = np.ndarray


@dataclass(frozen=True)
class RefModel:
    """The weights of a CharRNN as float64 arrays: ``p`` maps state_dict names to arrays."""

    arch: str
    layers: int
    p: dict[str, Array]

    @classmethod
    def from_torch(cls, model: CharRNN) -> RefModel:
        """Copies a CharRNN's weights."""
        p = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
        return cls(model.config.arch, model.config.layers, p)


def sigmoid(z: Array) -> Array:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-z))


def cell(ref: RefModel, layer: int, x: Array, state: tuple[Array, ...]) -> tuple[Array, ...]:
    """One step of one layer: x (B, In), state tensors (B, H) -> new state tensors (B, H)."""
    w_ih, w_hh = ref.p[f"rnn.weight_ih_l{layer}"], ref.p[f"rnn.weight_hh_l{layer}"]
    b_ih, b_hh = ref.p[f"rnn.bias_ih_l{layer}"], ref.p[f"rnn.bias_hh_l{layer}"]
    h = state[0]
    if ref.arch == "gru":
        a_r, a_z, a_n = np.split(x @ w_ih.T + b_ih, 3, axis=1)  # input parts (B, H) each
        h_r, h_z, h_n = np.split(h @ w_hh.T + b_hh, 3, axis=1)  # recurrent parts (B, H) each
        r, z = sigmoid(a_r + h_r), sigmoid(a_z + h_z)
        n = np.tanh(a_n + r * h_n)
        return ((1.0 - z) * n + z * h,)
    # RNN and LSTM: one matrix W = [W_hh W_ih] acting on [h_{t-1}; x_t], as in the classic formulation
    w = np.concatenate([w_hh, w_ih], axis=1)  # (G*H, H + In)
    pre = np.concatenate([h, x], axis=1) @ w.T + b_ih + b_hh  # (B, G*H)
    if ref.arch == "rnn":
        return (np.tanh(pre),)
    i, f, g, o = np.split(pre, 4, axis=1)
    c = sigmoid(f) * state[1] + sigmoid(i) * np.tanh(g)
    return (sigmoid(o) * np.tanh(c), c)


def step(ref: RefModel, ids: Array, state: list[tuple[Array, ...]]) -> tuple[Array, list[tuple[Array, ...]]]:
    """One character per stream: ids (B,), state[layer] = (h,) or (h, c) each (B, H) -> logits (B, V), state."""
    x = ref.p["embed.weight"][ids]  # (B, E)
    new_state = []
    for layer in range(ref.layers):
        s = cell(ref, layer, x, state[layer])
        new_state.append(s)
        x = s[0]  # the next layer reads this layer's h
    return x @ ref.p["decoder.weight"].T + ref.p["decoder.bias"], new_state


def zero_state(ref: RefModel, batch: int) -> list[tuple[Array, ...]]:
    """All-zero state: per layer (h,) or (h, c), each (B, H)."""
    hidden = ref.p["rnn.weight_hh_l0"].shape[1]
    n = 2 if ref.arch == "lstm" else 1
    return [tuple(np.zeros((batch, hidden)) for _ in range(n)) for _ in range(ref.layers)]


def rnn_loss_and_grads(ref: RefModel, ids: Array, targets: Array) -> tuple[float, dict[str, Array]]:
    """Mean cross-entropy of a 1-layer vanilla RNN over ids/targets (B, T) from a zero state, and its
    gradients by backpropagation through time, keyed like the state_dict."""
    if ref.arch != "rnn" or ref.layers != 1:
        raise ValueError("BPTT reference is for a 1-layer vanilla RNN")
    p = ref.p
    batch, steps = ids.shape
    hs = [np.zeros((batch, p["rnn.weight_hh_l0"].shape[1]))]  # h_0 .. h_T, each (B, H)
    probs, loss = [], 0.0
    for t in range(steps):  # forward, keeping what backward needs
        x = p["embed.weight"][ids[:, t]]  # (B, E)
        hs.append(np.tanh(x @ p["rnn.weight_ih_l0"].T + hs[-1] @ p["rnn.weight_hh_l0"].T
                          + p["rnn.bias_ih_l0"] + p["rnn.bias_hh_l0"]))
        y = hs[-1] @ p["decoder.weight"].T + p["decoder.bias"]  # (B, V)
        e = np.exp(y - y.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
        loss -= np.log(probs[-1][np.arange(batch), targets[:, t]]).sum()
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros_like(hs[0])  # ∂L/∂h_t arriving from step t+1
    for t in reversed(range(steps)):
        dy = probs[t].copy()
        dy[np.arange(batch), targets[:, t]] -= 1.0
        dy /= batch * steps  # (B, V): ∂L/∂y_t for the mean loss
        g["decoder.weight"] += dy.T @ hs[t + 1]
        g["decoder.bias"] += dy.sum(axis=0)
        dh = dy @ p["decoder.weight"] + dh_next  # (B, H)
        da = dh * (1.0 - hs[t + 1] ** 2)  # through tanh
        g["rnn.bias_ih_l0"] += da.sum(axis=0)
        g["rnn.bias_hh_l0"] += da.sum(axis=0)
        g["rnn.weight_ih_l0"] += da.T @ p["embed.weight"][ids[:, t]]
        g["rnn.weight_hh_l0"] += da.T @ hs[t]
        np.add.at(g["embed.weight"], ids[:, t], da @ p["rnn.weight_ih_l0"])
        dh_next = da @ p["rnn.weight_hh_l0"]
    return loss / (batch * steps), g
