"""Training data as an endless stream (an IterableDataset fed by a generator), finite val/test sets.

Samples: 16 Gaussian features; the class (of 4) is the argmax of a fixed random two-layer teacher."""

import torch
from torch import nn
from torch.utils.data import IterableDataset

N_FEATURES, N_CLASSES = 16, 4
_teacher = torch.Generator().manual_seed(42)
W1 = torch.randn(N_FEATURES, 32, generator=_teacher)
W2 = torch.randn(32, N_CLASSES, generator=_teacher)


def label(x):
    return (torch.tanh(x @ W1) @ W2).argmax(dim=-1)


def samples(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(N_FEATURES, generator=g)
        yield x, label(x)


class Stream(IterableDataset):
    def __init__(self, seed, n=None):
        self.seed, self.n = seed, n    # n=None: endless

    def __iter__(self):
        for i, sample in enumerate(samples(self.seed)):
            if self.n is not None and i >= self.n:
                return
            yield sample


def model():
    return nn.Sequential(nn.Linear(N_FEATURES, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, N_CLASSES))


def data():
    return Stream(seed=0), Stream(seed=1, n=2000), Stream(seed=2, n=2000)
