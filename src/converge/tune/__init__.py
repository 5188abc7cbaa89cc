"""`converge tune`: the search across runs (an Optuna study, its storage, the export of the best trial).
The names of the choice inside one run stay importable from here; they live in `converge.choose`."""

from converge.choose import RangeTest, StageLog, Tuning, choose_hyperparameters, lr_range_test, plot_range_test

__all__ = ["RangeTest", "StageLog", "Tuning", "choose_hyperparameters", "lr_range_test", "plot_range_test"]
