"""The training engine: the loop (`engine.loop`), the divergence guard (`engine.guard`), the run's record
(`engine.recorder`), acting on a convergence verdict (`engine.verdict`), device and precision, optimizers,
the objective and data parallelism. Import the modules themselves; this package imports nothing."""
