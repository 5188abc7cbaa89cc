"""Digits: the class and how much ink the digit uses (sum of pixels, raw).
I weight the two losses with learned uncertainties (Kendall et al. 2018), so I don't have to pick the weights."""
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.cls = nn.Linear(64, 10)
        self.ink = nn.Linear(64, 1)

    def forward(self, x):
        h = self.body(x)
        return self.cls(h), self.ink(h).squeeze(1)


class UncertaintyLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(2))

    def forward(self, out, targets):
        logits, ink = out
        label, amount = targets
        ce = F.cross_entropy(logits, label)
        mse = F.mse_loss(ink, amount)
        return (torch.exp(-self.log_vars[0]) * ce + self.log_vars[0]
                + 0.5 * torch.exp(-self.log_vars[1]) * mse + 0.5 * self.log_vars[1])


def model():
    return Net()


loss = UncertaintyLoss()


def accuracy(out, targets):
    return (out[0].argmax(1) == targets[0]).float().mean()


def ink_mae(out, targets):
    return (out[1] - targets[1]).abs().mean()


metrics = {"digit_accuracy": accuracy, "ink_mae": ink_mae}


def data():
    x, y = load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=g)
    x = torch.tensor(x, dtype=torch.float32)[idx]
    y = torch.tensor(y)[idx]
    ink = x.sum(1)
    split = lambda a, b: (x[a:b], (y[a:b], ink[a:b]))
    return split(0, 1100), split(1100, 1450), split(1450, None)
