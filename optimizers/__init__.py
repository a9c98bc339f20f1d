"""optiserve's optimizer: build, verify, benchmark and choose faster variants of a model."""

from .errors import OptimizeError, SourceError, ValidationDataError
from .fidelity import FidelityBudget
from .pipeline import OptimizationResult, OptimizeOptions, optimize
from .variants import VARIANTS

__all__ = ["FidelityBudget", "OptimizationResult", "OptimizeError", "OptimizeOptions",
           "SourceError", "VARIANTS", "ValidationDataError", "optimize"]
