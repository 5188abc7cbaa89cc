"""Multi-label classification: several of 5 labels can be on at once (generated with scikit-learn).

Targets are 0/1 floats of shape (N, 5) and the model has 5 outputs: converge infers BCE-with-logits per
label and reports per-label accuracy and exact match (every label right).

    converge train examples/multilabel.py
"""

import numpy as np
from sklearn.datasets import make_multilabel_classification
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))


def data():
    x, y = make_multilabel_classification(n_samples=2000, n_features=20, n_classes=5, n_labels=2,
                                          random_state=0)
    x = np.log1p(x).astype(np.float32)  # word-count-like features
    y = y.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
