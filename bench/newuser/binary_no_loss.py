"""A two-class problem from make_classification, one output unit, 0/1 float labels, no loss given."""

import torch
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def data():
    x, y = make_classification(n_samples=3000, n_features=20, n_informative=8, n_classes=2,
                               flip_y=0.02, random_state=0)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    to = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return (to(x_train), to(y_train)), (to(x_val), to(y_val)), (to(x_test), to(y_test))
