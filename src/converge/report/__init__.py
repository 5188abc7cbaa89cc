"""Plots and HTML reports of runs (matplotlib is imported only when a plot is drawn)."""
