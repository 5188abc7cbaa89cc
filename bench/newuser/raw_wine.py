"""Wine cultivars (3 classes) from scikit-learn's bundled copy, features as they come (not scaled)."""

from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def data():
    x, y = load_wine(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.25, random_state=0,
                                                      stratify=y_train)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
