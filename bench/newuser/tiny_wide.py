"""Digits with only 120 training images and a very wide MLP."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=120, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
