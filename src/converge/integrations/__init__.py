"""Front doors for other frameworks: callbacks that translate a framework's events into `converge.Monitor`'s
calls (the tracker, guard and recorder the Trainer uses). They hold no judgement of their own.

* `converge.integrations.lightning.ConvergeCallback`: for ``lightning`` (``pytorch_lightning`` too:
  `converge.integrations.pytorch_lightning`).
* `converge.integrations.transformers.ConvergeCallback`: for the Hugging Face ``Trainer``.

Each module imports its framework when it is imported itself, never from ``import converge``.
"""
