"""Digits with two inputs: the 8x8 image (into a small CNN) and 3 metadata numbers about it."""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class ImageAndMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.meta = nn.Sequential(nn.Linear(3, 16), nn.ReLU())
        self.head = nn.Linear(32 * 4 * 4 + 16, 10)

    def forward(self, image, metadata):
        return self.head(torch.cat([self.cnn(image), self.meta(metadata)], dim=1))


def model():
    return ImageAndMeta()


def _metadata(images):
    # ink per image, share of lit pixels, and how far down the ink sits
    ink = images.sum(dim=(1, 2, 3))
    lit = (images > 0).float().mean(dim=(1, 2, 3))
    rows = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1)
    centre = (images * rows).sum(dim=(1, 2, 3)) / ink.clamp(min=1e-6) / 7
    return torch.stack([ink / 64, lit, centre], dim=1)


def data():
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    labels = torch.tensor(y)
    meta = _metadata(images)
    idx = torch.arange(len(labels)).numpy()
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=y)
    train_idx, val_idx = train_test_split(train_idx, test_size=0.2, random_state=0, stratify=y[train_idx])
    split = lambda i: ((images[i], meta[i]), labels[i])  # noqa: E731
    return split(train_idx), split(val_idx), split(test_idx)
