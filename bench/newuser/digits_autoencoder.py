"""An MLP autoencoder that squeezes the 8x8 digits through 8 numbers and draws them again, written the natural way.

The user scales the pixels (0 to 16) to [0, 1], takes the images themselves as the targets and trains a
64-32-8-32-64 MLP with a sigmoid on the way out. No loss is given: float targets get MSE. Written for
issue 22 as a fresh task (a regression with 64 outputs), not tuned to any contender.
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def model():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(),
                         nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 64), nn.Sigmoid())


def data():
    x, _ = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    x_train, x_test = train_test_split(x, test_size=0.2, random_state=0)
    x_train, x_val = train_test_split(x_train, test_size=0.2, random_state=0)
    return (x_train, x_train), (x_val, x_val), (x_test, x_test)
