"""Friedman #1 regression where the ten features come in very different units (x1e-3 ... x1e4)."""

import numpy as np
from sklearn.datasets import make_friedman1
from sklearn.model_selection import train_test_split
from torch import nn

SCALES = np.array([1e-3, 1e4, 0.1, 100.0, 1.0, 1e3, 0.01, 10.0, 3e3, 0.3])


def model():
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def data():
    x, y = make_friedman1(n_samples=2000, noise=1.0, random_state=0)
    x = (x * SCALES).astype(np.float32)
    y = y.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
