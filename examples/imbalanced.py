"""Imbalanced classification (85 / 11 / 4 %) scored and monitored by a torchmetrics macro-F1 over the whole
validation split (`pip install 'torch-converge[metrics]'`). converge also reports balanced_accuracy and
macro_f1 of its own here, since the labels are imbalanced.

    converge train examples/imbalanced.py
"""

import numpy as np
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split
from torch import nn
from torchmetrics.classification import MulticlassF1Score

metrics = {"f1": MulticlassF1Score(num_classes=3, average="macro")}   # update / compute / reset per split
monitor, mode = "val_f1", "max"


def model():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))


def data():
    x, y = make_classification(n_samples=3000, n_features=20, n_informative=8, n_classes=3, weights=[0.85, 0.11, 0.04],
                               class_sep=0.8, random_state=0)
    x, y = x.astype(np.float32), y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.25, random_state=0,
                                                      stratify=y_train)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)
