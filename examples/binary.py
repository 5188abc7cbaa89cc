"""Binary classification with one output: is a breast tumour malignant? (scikit-learn's bundled set.)

The natural way: a one-output head and float 0/1 targets of shape (N,). converge infers
BCE-with-logits and reports accuracy (a logit above 0 predicts 1).

    converge train examples/binary.py
"""

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1))


def data():
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0,
                                                      stratify=y_train)
    mean, std = x_train.mean(0), x_train.std(0)

    def prepare(features, labels):
        return ((features - mean) / std).astype(np.float32), labels.astype(np.float32)

    return prepare(x_train, y_train), prepare(x_val, y_val), prepare(x_test, y_test)
