"""The training engine shared by every model: :func:`fit`, its plan, callbacks and DDP.

See :mod:`activecad.training.engine` for the fit and :mod:`activecad.training.distributed`
for running it under ``torchrun``.
"""

from activecad.training.distributed import DistContext
from activecad.training.engine import Callback, FitPlan, FitResult, FitState, FitTask, fit, lr_at

__all__ = ["Callback", "DistContext", "FitPlan", "FitResult", "FitState", "FitTask", "fit", "lr_at"]
