"""Model families: declared once (parameter table + lowering), consumed everywhere."""

from coregulation.models._base import (
    CTSystem,
    Model,
    Parameter,
    PriorScales,
    TimeGrid,
)
from coregulation.models.ctvar import CTVAR
from coregulation.models.oscillator import CoupledOscillator
from coregulation.models.parameters import ParameterSpace
from coregulation.models.var1 import VAR1

__all__ = [
    "CTSystem",
    "CTVAR",
    "CoupledOscillator",
    "Model",
    "Parameter",
    "ParameterSpace",
    "PriorScales",
    "TimeGrid",
    "VAR1",
]
