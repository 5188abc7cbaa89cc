"""Next-value forecasting of a noisy sum of sines with a one-layer LSTM, written the natural way.

A user slides a 32-step window over a generated series (three sines and Gaussian noise), takes the value
after each window as the target and trains ``nn.LSTM(1, 32)`` with a linear head on the last hidden state.
Splits are consecutive stretches of the series (train, then validation, then test), as a forecaster's are.
The loss is the default for float targets (MSE). The issue 22 table's first row: schedule-free AdamW kept
improving for 260-300 epochs where converge declared convergence at about 55.
"""

import numpy as np
import torch
from torch import nn

WINDOW = 32


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        out, _ = self.lstm(x.unsqueeze(-1))
        return self.head(out[:, -1]).squeeze(-1)


def model():
    return Forecaster()


def data():
    rng = np.random.default_rng(0)
    t = np.arange(3000, dtype=np.float32)
    series = (np.sin(t / 7) + 0.5 * np.sin(t / 23 + 1) + 0.3 * np.sin(t / 61 + 2)
              + 0.1 * rng.standard_normal(t.size)).astype(np.float32)
    windows = np.stack([series[i:i + WINDOW] for i in range(series.size - WINDOW)])
    targets = series[WINDOW:]
    x, y = torch.from_numpy(windows), torch.from_numpy(targets)
    a, b = 2000, 2480
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])
