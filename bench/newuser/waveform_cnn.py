"""Which of four wave shapes is in a noisy signal: a 1-D CNN on generated series, written the natural way.

Each series is 128 samples of a sine, square, triangle or sawtooth wave with a random period (12 to 40
samples), phase and amplitude (0.5 to 2), plus Gaussian noise (sd 0.5). Two conv layers with pooling and
a linear head give 4 logits; integer labels, no loss given (cross-entropy). Written for issue 22 as a fresh
task, not tuned to any contender.
"""

import numpy as np
import torch
from torch import nn

LENGTH, SHAPES = 128, 4


class WaveNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(32, SHAPES)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1)).squeeze(-1))


def model():
    return WaveNet()


def _waves(n, rng):
    labels = rng.integers(0, SHAPES, n)
    period = rng.uniform(12, 40, (n, 1))
    phase = rng.uniform(0, 1, (n, 1))
    amplitude = rng.uniform(0.5, 2, (n, 1))
    cycle = (np.arange(LENGTH) / period + phase) % 1.0          # where in its cycle each sample is, 0..1
    shapes = np.stack([np.sin(2 * np.pi * cycle), np.where(cycle < 0.5, 1.0, -1.0),
                       4 * np.abs(cycle - 0.5) - 1, 2 * cycle - 1])
    x = amplitude * shapes[labels, np.arange(n)] + rng.normal(0, 0.5, (n, LENGTH))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


def data():
    rng = np.random.default_rng(0)
    return _waves(3000, rng), _waves(1000, rng), _waves(1000, rng)
