"""Choosing the knobs inside one run: the LR range test, the race, and the automatic choice of every "auto"
knob. Below the assembly; the search across runs (`converge.tune`) sits above it."""

from converge.choose.auto import StageLog, Tuning, choose_hyperparameters
from converge.choose.lr_find import RangeTest, lr_range_test, plot_range_test

__all__ = ["RangeTest", "StageLog", "Tuning", "choose_hyperparameters", "lr_range_test", "plot_range_test"]
