"""`ConvergeCallback` for ``pytorch_lightning`` (the older package name); see `converge.integrations._lightning`."""

import pytorch_lightning as _pl

from converge.integrations._lightning import make_callback

ConvergeCallback = make_callback(_pl)

__all__ = ["ConvergeCallback"]
