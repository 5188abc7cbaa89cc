"""Plots of a run (matplotlib is imported only when a plot is drawn)."""
