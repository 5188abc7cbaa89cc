"""Friedman #1 regression with a plain linear model."""

import torch
from sklearn.datasets import make_friedman1
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Linear(10, 1)


def data():
    x, y = make_friedman1(n_samples=2000, noise=1.0, random_state=0)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return (f(x_train), f(y_train)), (f(x_val), f(y_val)), (f(x_test), f(y_test))
