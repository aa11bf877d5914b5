"""Bayesian machine unlearning for Pyro: forget data from a variational posterior."""

from . import datasets, exact, metrics
from .forget import ForgetResult, forget
from .guides import AutoZukoFlow
from .handlers import UnlearnMessenger, erased_log_likelihood, unlearn
from .infer import ReverseKL, Trace_EUBO, adjusted_log_likelihood
from .posterior import FrozenPosterior, freeze
from .retrain import RetrainResult, retrain
from .sweep import FLOW_LAMBDAS, LAMBDAS, SweepResult, lambda_sweep

__version__ = "0.1.0"

__all__ = [
    "FLOW_LAMBDAS",
    "LAMBDAS",
    "AutoZukoFlow",
    "ForgetResult",
    "FrozenPosterior",
    "RetrainResult",
    "ReverseKL",
    "SweepResult",
    "Trace_EUBO",
    "UnlearnMessenger",
    "adjusted_log_likelihood",
    "datasets",
    "erased_log_likelihood",
    "exact",
    "forget",
    "freeze",
    "lambda_sweep",
    "metrics",
    "retrain",
    "unlearn",
]
