"""An imbalanced three-class task written the natural way: its own focal loss and a macro-F1 metric
function (scikit-learn's), monitored with mode max."""
import numpy as np
import torch.nn.functional as F
from sklearn.datasets import make_classification
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import nn

monitor = "val_f1"
mode = "max"


def model():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))


def data():
    x, y = make_classification(n_samples=6000, n_features=20, n_informative=8, n_classes=3, n_clusters_per_class=2,
                               weights=[0.85, 0.11, 0.04], flip_y=0.02, class_sep=0.8, random_state=0)
    x, y = x.astype(np.float32), y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_train, y_train, test_size=0.25, random_state=0,
                                                      stratify=y_train)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def loss(outputs, targets, gamma=2.0):
    log_p = F.log_softmax(outputs.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
    return (-(1 - log_p.exp()) ** gamma * log_p).mean()


def f1(outputs, targets):
    return f1_score(targets.cpu().numpy(), outputs.argmax(1).cpu().numpy(), average="macro")


metrics = {"f1": f1}
