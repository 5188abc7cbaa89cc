"""A planted run that overfits before its first LR cut, for the tests of the restart from the best weights:
60 noisy rows that a 512-unit MLP memorizes (AdamW 3e-3, batches of 16: 4 steps an epoch, patience 5)."""

from __future__ import annotations

import torch
from torch import nn

import converge


def fit_overfitting(out, **options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(260, 20, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(260, generator=g) > 0).long()   # noisy labels: the MLP memorizes them
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 512), nn.ReLU(), nn.Linear(512, 2))
    settings = dict(max_epochs=40, lr=3e-3, optimizer="adamw", batch_size=16, seed=0, patience=5, verbose=False,
                    device="cpu")
    return converge.fit(model, (x[:60], y[:60]), (x[60:], y[60:]), out=out, **{**settings, **options})
