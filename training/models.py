"""Character-level recurrent language models: vanilla RNN, LSTM and GRU."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

Architecture = Literal["rnn", "lstm", "gru"]
ARCHITECTURES: tuple[Architecture, ...] = ("rnn", "lstm", "gru")
# A state is a tuple of [layers, batch, hidden] tensors: (h,) for RNN and GRU, (h, c) for the LSTM.
State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters that fully determine a model's shape."""

    arch: Architecture = "lstm"
    vocab_size: int = 65
    embedding_size: int = 64  # input embedding width (x_t)
    hidden_size: int = 256
    layers: int = 2
    dropout: float = 0.0  # between stacked layers, and before the output projection

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form, for checkpoints and artifact metadata."""
        return asdict(self)

    def state_names(self) -> tuple[str, ...]:
        """Logical names of the state tensors, in order."""
        return ("h", "c") if self.arch == "lstm" else ("h",)


class CharRNN(nn.Module):
    """Embedding -> stacked RNN/LSTM/GRU -> linear decoder; forward returns raw logits and the new state.

    The cells follow the classic equations (PyTorch's fused kernels): vanilla RNN
    h_t = tanh(W_ih x_t + W_hh h_{t-1} + b), i.e. tanh(W [h_{t-1}; x_t]); LSTM
    [i f g o] = [σ σ tanh σ](W [h_{t-1}; x_t]), c_t = f⊙c_{t-1} + i⊙g, h_t = o⊙tanh(c_t); and y_t = W_hy h_t.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[config.arch]
        self.embed = nn.Embedding(config.vocab_size, config.embedding_size)
        self.rnn = cell(
            config.embedding_size,
            config.hidden_size,
            num_layers=config.layers,
            dropout=config.dropout if config.layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(config.dropout)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        """All-zero state for ``batch`` streams."""
        shape = (self.config.layers, batch, self.config.hidden_size)
        dtype = self.decoder.weight.dtype  # follows .double() etc.
        return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in self.config.state_names())

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """ids (B, T) int64 -> logits (B, T, V), new state."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        x = self.embed(ids)  # (B, T, E)
        if self.config.arch == "lstm":
            out, (h, c) = self.rnn(x, (state[0], state[1]))  # out (B, T, H)
            new_state: State = (h, c)
        else:
            out, h = self.rnn(x, state[0])
            new_state = (h,)
        logits = self.decoder(self.drop(out))  # (B, T, V)
        return logits, new_state

    def num_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def detach_state(state: State) -> State:
    """Cuts the autograd history between truncated-BPTT windows (the value is kept)."""
    return tuple(s.detach() for s in state)
