"""Digits straight from scikit-learn: numpy arrays, pixel values 0-16, float64, integer labels.
A small MLP, the default loss."""
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))


def data():
    X, y = load_digits(return_X_y=True)
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.4, random_state=0, stratify=y)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)
    return (X_train, y_train), (X_val, y_val), (X_test, y_test)
