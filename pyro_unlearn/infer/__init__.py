"""Unlearning losses for :class:`pyro.infer.SVI`, one per module (as in ``pyro.infer``)."""

from .adjusted_likelihood import adjusted_log_likelihood
from .base import UnlearningLoss
from .eubo import Trace_EUBO
from .fused import ErasedLikelihood, erased_log_likelihood_fn
from .influence import IndefiniteHessianError, InfluenceUnlearnResult, influence_unlearn
from .laplace import LaplaceUnlearnResult, laplace_unlearn
from .mcmc import LowESSWarning, MCMCUnlearnResult, mcmc_unlearn
from .natural import NaturalGradientResult, gaussian_reverse_kl
from .natural_eubo import NaturalEUBOResult, gaussian_eubo
from .reverse_kl import ReverseKL, effective_sample_size
from .threshold import (
    MassScale,
    SmallKeptMassWarning,
    kept_mass,
    lam_for_mass,
    warn_small_kept_mass,
)

__all__ = [
    "ErasedLikelihood",
    "IndefiniteHessianError",
    "InfluenceUnlearnResult",
    "LaplaceUnlearnResult",
    "LowESSWarning",
    "MCMCUnlearnResult",
    "MassScale",
    "NaturalEUBOResult",
    "NaturalGradientResult",
    "ReverseKL",
    "SmallKeptMassWarning",
    "Trace_EUBO",
    "UnlearningLoss",
    "adjusted_log_likelihood",
    "effective_sample_size",
    "erased_log_likelihood_fn",
    "gaussian_eubo",
    "gaussian_reverse_kl",
    "influence_unlearn",
    "kept_mass",
    "lam_for_mass",
    "laplace_unlearn",
    "mcmc_unlearn",
    "warn_small_kept_mass",
]
