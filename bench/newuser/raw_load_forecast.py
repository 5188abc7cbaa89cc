"""Forecast the next 12 hours of electricity load (kW) from the last 48 hours, raw readings.
A GRU over [N, 48, 1], 12 outputs, no loss given."""
import numpy as np
import torch
from torch import nn


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(1, 32, batch_first=True)
        self.head = nn.Linear(32, 12)

    def forward(self, x):
        _, h = self.gru(x)
        return self.head(h[-1])


def _series(hours, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    daily = 120 * np.sin(2 * np.pi * (t % 24) / 24 - 1.2)
    weekly = 40 * (((t // 24) % 7) < 5)
    trend = 0.002 * t
    noise = np.zeros(hours)
    for i in range(1, hours):
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 12)
    return 450 + daily + weekly + trend + noise


def _windows(series, start, stop):
    xs, ys = [], []
    for i in range(start, stop - 60, 3):
        xs.append(series[i:i + 48])
        ys.append(series[i + 48:i + 60])
    x = torch.tensor(np.array(xs), dtype=torch.float32).unsqueeze(-1)
    return x, torch.tensor(np.array(ys), dtype=torch.float32)


def model():
    return Forecaster()


def data():
    s = _series(24 * 365, 0)
    n = len(s)
    return _windows(s, 0, int(0.7 * n)), _windows(s, int(0.7 * n), int(0.85 * n)), _windows(s, int(0.85 * n), n)
