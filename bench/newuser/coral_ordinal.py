"""Ordinal ratings 0..4 from 8 raw survey features, CORAL style: K-1 logits, one per threshold."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

K = 5


def make(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) * np.array([1, 10, 100, 0.1, 1, 5, 50, 2])
    w = np.array([0.8, 0.05, -0.004, 3.0, 0.0, 0.1, 0.01, -0.3])
    score = x @ w + np.sin(x[:, 0]) + rng.normal(scale=0.5, size=n)
    y = np.digitize(score, np.quantile(score, [0.2, 0.4, 0.6, 0.8]))
    return x.astype(np.float32), y


class Coral(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1, bias=False))
        self.bias = nn.Parameter(torch.zeros(K - 1))

    def forward(self, x):
        return self.net(x) + self.bias


def model():
    return Coral()


def loss(logits, y):
    levels = (y.unsqueeze(1) > torch.arange(K - 1, device=y.device)).float()
    return F.binary_cross_entropy_with_logits(logits, levels)


def mae(logits, y):
    return ((logits > 0).sum(1) - y).abs().float().mean()


metrics = {"mae": mae}
monitor, mode = "mae", "min"


def data():
    x, y = make(2000, 0)
    return (x[:1200], y[:1200]), (x[1200:1600], y[1200:1600]), (x[1600:], y[1600:])
