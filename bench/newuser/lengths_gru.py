"""Sentiment of variable-length sensor traces: each trace is 5-60 steps of 3 readings, padded with zeros
to 60; the model packs them with their lengths so the GRU never reads padding. Inputs are (traces,
lengths); two classes; no loss given."""
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 32, batch_first=True)
        self.head = nn.Linear(32, 2)

    def forward(self, traces, lengths):
        packed = pack_padded_sequence(traces, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.head(h[-1])


def model():
    return Net()


def data():
    g = torch.Generator().manual_seed(2)
    n, t = 3000, 60
    lengths = torch.randint(5, t + 1, (n,), generator=g)
    label = torch.randint(0, 2, (n,), generator=g)
    steps = torch.arange(t).float()
    freq = torch.where(label == 1, 0.35, 0.25)[:, None] + 0.05 * torch.randn(n, 1, generator=g)
    wave = torch.sin(freq * steps + 6.28 * torch.rand(n, 1, generator=g))
    traces = torch.stack([wave, wave.roll(1, 1), torch.randn(n, t, generator=g)], 2) * 0.5
    traces = traces + 0.3 * torch.randn(n, t, 3, generator=g)
    traces[steps[None, :].expand(n, t) >= lengths[:, None]] = 0.0
    split = lambda a, b: ((traces[a:b], lengths[a:b]), label[a:b])
    return split(0, 2000), split(2000, 2500), split(2500, n)
