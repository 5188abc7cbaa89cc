"""A model with two inputs: each 8x8 digit image goes through a small CNN, three numbers about it (ink,
share of lit pixels, how low the ink sits) through a linear layer, and the two are joined. The data is
given as ((images, metadata), labels): converge calls model(images, metadata).

    converge train examples/two_inputs.py
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class ImageAndMetadata(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                   nn.Linear(16 * 4 * 4, 64), nn.ReLU())
        self.metadata = nn.Sequential(nn.Linear(3, 16), nn.ReLU())
        self.head = nn.Linear(64 + 16, 10)

    def forward(self, image, metadata):
        return self.head(torch.cat([self.image(image), self.metadata(metadata)], dim=1))


def model():
    return ImageAndMetadata()


def data():
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    rows = torch.arange(8.0).view(1, 1, 8, 1)
    ink = images.sum(dim=(1, 2, 3))
    metadata = torch.stack([ink / 64, (images > 0).float().mean(dim=(1, 2, 3)),
                            (images * rows).sum(dim=(1, 2, 3)) / ink.clamp(min=1e-6) / 7], dim=1)
    labels = torch.tensor(y)
    train, test = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=y)
    train, val = train_test_split(train, test_size=0.2, random_state=0, stratify=y[train])

    def split(index):
        return (images[index], metadata[index]), labels[index]

    return split(train), split(val), split(test)
