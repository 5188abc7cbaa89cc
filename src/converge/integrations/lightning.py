"""`ConvergeCallback` for ``lightning`` (``import lightning``); see `converge.integrations._lightning`."""

import lightning.pytorch as _pl

from converge.integrations._lightning import make_callback

ConvergeCallback = make_callback(_pl)

__all__ = ["ConvergeCallback"]
