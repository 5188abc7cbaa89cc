"""Regression: disease progression from 10 clinical features (scikit-learn's bundled diabetes set).

Targets are standardized with training statistics so the loss is on a unit scale; MSE is inferred
from the float targets.

    converge train examples/diabetes.py
"""

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def data():
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    mean, std = x_train.mean(0), x_train.std(0)
    y_mean, y_std = y_train.mean(), y_train.std()

    def prepare(features, targets):
        return ((features - mean) / std).astype(np.float32), ((targets - y_mean) / y_std).astype(np.float32)

    return prepare(x_train, y_train), prepare(x_val, y_val), prepare(x_test, y_test)
