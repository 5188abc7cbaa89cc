"""Breast cancer (malignant or benign) from scikit-learn's bundled copy, raw features, one-logit head."""

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.layers(x).squeeze(1)  # one logit per sample, shape [N] like the targets


def model():
    return Net()


loss = nn.BCEWithLogitsLoss()


def data():
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)

    def tensors(x, y):
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)

    return tensors(x_train, y_train), tensors(x_val, y_val), tensors(x_test, y_test)
