"""Digits, standardized inputs, a 64-128-128-10 MLP: a clean, easy task."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn


def model():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def data():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0,
                                                      stratify=y_train)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = (scaler.transform(a).astype("float32") for a in (x_train, x_val, x_test))
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
