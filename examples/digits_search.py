"""The digits MLP with knobs of its own for `converge tune`: the hidden width, dropout, and whether the
training images are augmented. `search_space(trial)` picks them with Optuna's `trial.suggest_*`.

    converge tune examples/digits_search.py --trials 20
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def model(hidden=128, dropout=0.0):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))


def data(augment=False):
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=0,
                                                        stratify=digits.target)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.2, random_state=0,
                                                      stratify=y_train)
    if augment:  # each training image also shifted one pixel left and one right
        images = x_train.reshape(-1, 8, 8)
        x_train = np.concatenate([images, np.roll(images, -1, axis=2), np.roll(images, 1, axis=2)]).reshape(-1, 64)
        y_train = np.concatenate([y_train] * 3)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def search_space(trial):
    return {"model": {"hidden": trial.suggest_int("hidden", 32, 256, log=True),
                      "dropout": trial.suggest_float("dropout", 0.0, 0.5)},
            "data": {"augment": trial.suggest_categorical("augment", [False, True])}}
