"""Digits as they come (pixels 0-16). Two heads in a dict: the digit, and whether it is >= 5.
My loss adds the two cross-entropies."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.digit = nn.Linear(64, 10)
        self.high = nn.Linear(64, 2)

    def forward(self, x):
        h = self.body(x)
        return {"digit": self.digit(h), "high": self.high(h)}


def model():
    return Net()


def loss(out, y):
    return F.cross_entropy(out["digit"], y) + F.cross_entropy(out["high"], (y >= 5).long())


def data():
    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(2)
    idx = torch.randperm(len(y), generator=g)
    x = torch.tensor(x, dtype=torch.float32)[idx]
    y = torch.tensor(y)[idx]
    return (x[:1100], y[:1100]), (x[1100:1450], y[1100:1450]), (x[1450:], y[1450:])
