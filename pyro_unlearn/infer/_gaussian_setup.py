"""What the Gaussian-guide solvers share: q(θ|D) frozen, the flat layout, log p(D_e|θ) on flat θ."""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal

from ..guides import LatentLayout, is_gaussian, latent_layout
from ..posterior import FrozenPosterior, freeze
from ..traces import preserved_rng
from ..validation import check_finite_data
from .fused import ErasedLikelihood, erased_log_likelihood_fn

__all__ = ["SUPPORTED", "FlatErased", "prepare"]

SUPPORTED = "AutoNormal, AutoDiagonalNormal or AutoMultivariateNormal"


class FlatErased:
    """θ (S, P) ↦ log p(D_e|θ_s) (S,): each site's slice of θ through its bijection, then the
    recorded erased log-likelihood (:func:`~pyro_unlearn.infer.erased_log_likelihood_fn`)."""

    def __init__(self, layout: LatentLayout, fn: ErasedLikelihood) -> None:
        self.layout, self.fn = layout, fn

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        S = theta.shape[0]
        values = {
            s.name: s.transform(theta[:, s.start : s.stop].reshape(S, *s.shape)).reshape(
                S, *self.fn.shapes[s.name]
            )
            for s in self.layout.sites
        }
        return self.fn(values)


def check_guide(guide: Any, solver: str, method: str) -> None:
    """Refuse a guide the Gaussian solver ``solver`` cannot write into (``method``: the
    ``pu.forget`` method that trains it instead)."""
    if isinstance(guide, AutoLowRankMultivariateNormal):
        raise TypeError(
            f"{solver} cannot write its answer into an AutoLowRankMultivariateNormal: its "
            "family (D + W Wᵀ, fixed rank) does not hold every covariance, and no closed-form "
            f"projection onto it exists; use an {SUPPORTED}, or "
            f"pu.forget(..., method='{method}'), which trains the low-rank guide"
        )
    if isinstance(guide, FrozenPosterior) or not is_gaussian(guide):
        raise TypeError(
            f"{solver} needs a live Gaussian guide ({SUPPORTED}), got {type(guide).__name__}; "
            f"other guides (flows) take pu.forget(..., method='{method}')"
        )


def prepare(
    model, guide, posterior, args, kwargs, erased, plate, jit, solver: str, method: str
) -> tuple[FrozenPosterior, LatentLayout, ErasedLikelihood]:
    """q(θ|D) frozen (``posterior``, or the guide now), the guide's flat layout and the batched
    log p(D_e|θ), every check passed before anything changes."""
    check_guide(guide, solver, method)
    check_finite_data(args, kwargs)
    if posterior is None:
        with preserved_rng(args, kwargs):
            posterior = freeze(guide, *args, **kwargs)
    elif not isinstance(posterior, FrozenPosterior):
        raise TypeError(
            f"posterior must be a FrozenPosterior (pu.freeze(guide)), got "
            f"{type(posterior).__name__}"
        )
    else:
        posterior.check_guide(guide, *args, **kwargs)
    try:
        fn = erased_log_likelihood_fn(
            model, posterior, *args, erased=erased, plate=plate, jit=jit, **kwargs
        )
    except ValueError as error:
        raise ValueError(f"{solver} draws θ in a pyro.plate: {error}") from None
    return posterior, latent_layout(guide), fn
