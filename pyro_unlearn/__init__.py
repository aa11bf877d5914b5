"""Bayesian machine unlearning for Pyro: forget data from a variational posterior."""

from . import codec, exact, guides, lcodec, ledger, metrics, params, trust
from .forget import ForgetResult, WeightCollapseWarning, forget
from .guides import AutoZukoFlow
from .handlers import UnlearnMessenger, erased_log_likelihood, unlearn
from .infer import (
    IndefiniteHessianError,
    InfluenceUnlearnResult,
    LaplaceUnlearnResult,
    LowESSWarning,
    MCMCUnlearnResult,
    ReverseKL,
    SmallKeptMassWarning,
    Trace_EUBO,
    adjusted_log_likelihood,
    influence_unlearn,
    kept_mass,
    lam_for_mass,
    laplace_unlearn,
    mcmc_unlearn,
)
from .ledger import RequestLedger
from .posterior import FrozenPosterior, freeze
from .results import UnlearningResult
from .retrain import RetrainResult, retrain
from .sweep import FLOW_LAMBDAS, LAMBDAS, SweepResult, lambda_sweep

__version__ = "0.1.0"

__all__ = [
    "FLOW_LAMBDAS",
    "LAMBDAS",
    "AutoZukoFlow",
    "ForgetResult",
    "FrozenPosterior",
    "IndefiniteHessianError",
    "InfluenceUnlearnResult",
    "LaplaceUnlearnResult",
    "LowESSWarning",
    "MCMCUnlearnResult",
    "RequestLedger",
    "SmallKeptMassWarning",
    "RetrainResult",
    "ReverseKL",
    "SweepResult",
    "Trace_EUBO",
    "UnlearnMessenger",
    "UnlearningResult",
    "WeightCollapseWarning",
    "adjusted_log_likelihood",
    "codec",
    "erased_log_likelihood",
    "exact",
    "forget",
    "freeze",
    "guides",
    "influence_unlearn",
    "kept_mass",
    "lam_for_mass",
    "lambda_sweep",
    "laplace_unlearn",
    "lcodec",
    "ledger",
    "mcmc_unlearn",
    "metrics",
    "params",
    "retrain",
    "trust",
    "unlearn",
]
