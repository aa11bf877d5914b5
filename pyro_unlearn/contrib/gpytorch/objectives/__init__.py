"""The unlearning objectives in the shape of :mod:`gpytorch.mlls`: the EUBO and the reverse KL.

The modules: :mod:`~pyro_unlearn.contrib.gpytorch.objectives.base` (the template they share),
:mod:`~pyro_unlearn.contrib.gpytorch.objectives.eubo` (:class:`VariationalEUBO`) and
:mod:`~pyro_unlearn.contrib.gpytorch.objectives.reverse_kl` (:class:`VariationalReverseKL`).
"""

from .eubo import VariationalEUBO
from .reverse_kl import VariationalReverseKL

__all__ = ["VariationalEUBO", "VariationalReverseKL"]
