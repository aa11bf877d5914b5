"""Unlearning for models of other libraries: :mod:`pyro_unlearn.contrib.gpytorch` (GPyTorch's
sparse variational GPs) and :mod:`pyro_unlearn.contrib.pyro_gp` (Pyro's own variational GPs)."""
