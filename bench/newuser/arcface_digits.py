"""Face-recognition style training on digits: the network outputs an embedding, and an
additive angular margin (ArcFace) loss holds one learned center per class."""
import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def model():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))


class ArcFace(nn.Module):
    def __init__(self, dim=32, classes=10, s=16.0, m=0.3):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, emb, y):
        cos = F.normalize(emb) @ F.normalize(self.centers).T
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta + self.m)
        onehot = F.one_hot(y, cos.shape[1]).bool()
        logits = torch.where(onehot, target, cos) * self.s
        return F.cross_entropy(logits, y)


loss = ArcFace()


def accuracy(emb, y):
    cos = F.normalize(emb) @ F.normalize(loss.centers).T
    return (cos.argmax(1) == y).float().mean()


metrics = {"accuracy": accuracy}


def data():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(y), generator=g)
    x, y = x[idx], y[idx]
    return (x[:1100], y[:1100]), (x[1100:1450], y[1100:1450]), (x[1450:], y[1450:])
