"""Choosing hyperparameters: the LR range test and the automatic choice of every "auto" knob."""

from converge.tune.auto import StageLog, Tuning, choose_hyperparameters
from converge.tune.lr_find import RangeTest, lr_range_test, plot_range_test

__all__ = ["RangeTest", "StageLog", "Tuning", "choose_hyperparameters", "lr_range_test", "plot_range_test"]
