"""Multi-label classification: 5 labels per sample, each 0 or 1 (make_multilabel_classification)."""

import numpy as np
from sklearn.datasets import make_multilabel_classification
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5))


def data():
    x, y = make_multilabel_classification(n_samples=3000, n_features=20, n_classes=5, n_labels=2,
                                          random_state=0)
    x, y = x.astype(np.float32), y.astype(np.float32)   # y: [N, 5] of 0/1
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
