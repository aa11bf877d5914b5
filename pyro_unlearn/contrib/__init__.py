"""Unlearning for models of other libraries: :mod:`pyro_unlearn.contrib.gpytorch` (sparse
variational GPs)."""
