"""Disease progression from scikit-learn's diabetes data, targets as they come (about 25 to 346), MLP.

The user keeps the bundled features (already centred and scaled) and the raw targets, so the loss starts
near 29,000 (MSE) and the default loss for float targets (MSE) applies. The issue 22 table's "raw diabetes".
"""

from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def data():
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
