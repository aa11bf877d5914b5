"""KL divergences between posteriors over θ: closed form for Gaussians, Monte Carlo otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from ..guides.gaussian import GAUSSIAN_GUIDES, read_gaussian
from ..posterior import FrozenPosterior
from ..traces import latent_sites, sum_sites_per_particle
from ..validation import check_finite, check_positive_int
from ._sampling import vectorized_traces

__all__ = ["gaussian_kl", "param_kl"]

_METHODS = ("auto", "closed_form", "monte_carlo")


def gaussian_kl(
    loc_p: torch.Tensor, cov_p: torch.Tensor, loc_q: torch.Tensor, cov_q: torch.Tensor
) -> torch.Tensor:
    r"""KL(N(μ_p, Σ_p) ‖ N(μ_q, Σ_q)) in closed form:

    .. math:: \mathrm{KL} = ½\big[\mathrm{tr}(Σ_q^{-1}Σ_p) + (μ_q−μ_p)^\top Σ_q^{-1}(μ_q−μ_p) − d
              + \log|Σ_q| − \log|Σ_p|\big]

    Arguments:
        loc_p: μ_p, shape ``(..., d)``.
        cov_p: Σ_p, shape ``(..., d, d)``, positive definite.
        loc_q: μ_q, shape ``(..., d)``.
        cov_q: Σ_q, shape ``(..., d, d)``, positive definite.

    Returns:
        The KL divergence, of the broadcast batch shape (a scalar for single Gaussians), in the
        inputs' dtype and device.

    Example:
        >>> gaussian_kl(torch.zeros(1), torch.eye(1), torch.ones(1), torch.eye(1)).item()
        0.5
    """
    _check_gaussian("p", loc_p, cov_p)
    _check_gaussian("q", loc_q, cov_q)
    if loc_p.shape[-1] != loc_q.shape[-1]:
        raise ValueError(f"p has dimension {loc_p.shape[-1]}, q {loc_q.shape[-1]}")
    p = torch.distributions.MultivariateNormal(loc_p, covariance_matrix=cov_p)
    q = torch.distributions.MultivariateNormal(loc_q, covariance_matrix=cov_q)
    return torch.distributions.kl_divergence(p, q)


def _check_gaussian(name: str, loc: torch.Tensor, cov: torch.Tensor) -> None:
    if loc.dim() == 0 or cov.shape[-2:] != loc.shape[-1:] * 2:
        raise ValueError(
            f"{name}'s loc {tuple(loc.shape)} and covariance {tuple(cov.shape)} must be (..., d) "
            "and (..., d, d)"
        )
    check_finite(f"loc_{name}", loc)
    check_finite(f"cov_{name}", cov)
    if bool((torch.linalg.cholesky_ex(cov).info != 0).any()):
        raise ValueError(f"cov_{name} is not positive definite")


def _unwrap(posterior: Callable[..., Any]) -> Callable[..., Any]:
    return posterior.guide if isinstance(posterior, FrozenPosterior) else posterior


def _auxiliary_sites(
    posterior: Callable[..., Any], args: tuple, kwargs: dict
) -> dict[str, tuple[int, ...]]:
    """The sites a posterior is scored on (see :func:`~pyro_unlearn.traces.latent_sites`) and
    the shapes of their values."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(posterior).get_trace(*args, **kwargs)
    return {name: tuple(trace.nodes[name]["value"].shape) for name in latent_sites(trace)}


def _name(posterior: Callable[..., Any]) -> str:
    guide = _unwrap(posterior)
    kind = type(guide).__name__ if isinstance(guide, torch.nn.Module) else guide.__name__
    return f"frozen {kind}" if isinstance(posterior, FrozenPosterior) else kind


def _closed_form(p: Callable[..., Any], q: Callable[..., Any]) -> torch.Tensor:
    loc_p, cov_p = read_gaussian(p)
    loc_q, cov_q = read_gaussian(q)
    if loc_p.shape != loc_q.shape:
        raise ValueError(
            f"the two posteriors' latent spaces differ: dimensions {tuple(loc_p.shape)} and "
            f"{tuple(loc_q.shape)}"
        )
    return gaussian_kl(loc_p, cov_p, loc_q, cov_q)


def _monte_carlo(
    p: Callable[..., Any],
    q: Callable[..., Any],
    sites: dict[str, tuple[int, ...]],
    args: tuple,
    kwargs: dict,
    num_samples: int,
) -> torch.Tensor:
    """mean_s [log p(θ_s) − log q(θ_s)], θ_s ~ p in one plate, q replayed on p's trace."""
    trace_p, _, _, dim = vectorized_traces(None, p, args, kwargs, num_samples, "_param_kl_samples")
    with torch.no_grad(), poutine.block():
        vectorized_q = pyro.plate("_param_kl_samples", num_samples, dim=dim)(q)
        trace_q = poutine.trace(poutine.replay(vectorized_q, trace=trace_p)).get_trace(
            *args, **kwargs
        )
        trace_p.compute_log_prob(lambda name, site: name in sites)
        trace_q.compute_log_prob(lambda name, site: name in sites)
        log_p = sum_sites_per_particle(trace_p, sites, dim, num_samples)
        log_q = sum_sites_per_particle(trace_q, sites, dim, num_samples)
    return (log_p - log_q).mean()


def param_kl(
    p: Callable[..., Any],
    q: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    method: str = "auto",
    **kwargs: Any,
) -> torch.Tensor:
    r"""KL(p ‖ q) between two posteriors over θ, in the guides' unconstrained (auxiliary) space.

    ``method="closed_form"``: :func:`gaussian_kl` on :func:`~pyro_unlearn.guides.read_gaussian`,
    for Gaussian AutoGuides (:data:`~pyro_unlearn.guides.GAUSSIAN_GUIDES`, live or frozen).
    ``method="monte_carlo"``:

    .. math:: \mathrm{KL}(p‖q) ≈ \frac1S \sum_{s=1}^S [\log p(θ_s) − \log q(θ_s)],\qquad θ_s \sim p

    with S = ``num_samples`` draws in one plate, summing only the auxiliary sites, q scored by
    replaying it on p's trace, without gradients. ``"auto"`` takes the closed form when both
    are Gaussian AutoGuides, Monte Carlo otherwise.

    Two *live* AutoGuides of one class share their parameters' names in the param store (they
    are the same distribution): compare two posteriors of one guide class as frozen ones
    (:func:`pyro_unlearn.freeze`).

    Arguments:
        p: the first posterior (a live AutoGuide, a guide function or a
            :class:`~pyro_unlearn.FrozenPosterior`).
        q: the second posterior, with the same auxiliary sites as ``p``.
        *args: the guides' arguments (they are traced).
        num_samples: S, the Monte-Carlo draws.
        method: ``"auto"``, ``"closed_form"`` or ``"monte_carlo"``.
        **kwargs: the guides' keyword arguments.

    Returns:
        The KL divergence, a scalar tensor.

    Raises:
        ValueError: the posteriors have different auxiliary sites (names or shapes), or an
            unknown ``method``.
        TypeError: ``method="closed_form"`` with a guide that is not a Gaussian AutoGuide.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal, init_to_value
        >>> from pyro_unlearn import freeze
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> def posterior(loc, scale):
        ...     init = init_to_value(values={"mu": torch.tensor(loc)})
        ...     return freeze(AutoNormal(model, init_loc_fn=init, init_scale=scale))
        >>> kl = param_kl(posterior(0.0, 1.0), posterior(1.0, 2.0))  # log 2 + 2/8 − 1/2
        >>> round(float(kl), 4)
        0.4431
    """
    num_samples = check_positive_int("num_samples", num_samples)
    for name, posterior in (("p", p), ("q", q)):
        if not callable(posterior):
            raise TypeError(f"{name} must be a posterior (a guide), got {type(posterior).__name__}")
    if method not in _METHODS:
        raise ValueError(f"method must be 'auto', 'closed_form' or 'monte_carlo', got {method!r}")
    sites_p, sites_q = _auxiliary_sites(p, args, kwargs), _auxiliary_sites(q, args, kwargs)
    if sites_p != sites_q:
        raise ValueError(
            f"the two posteriors have different auxiliary sites ({_name(p)}: {sites_p}, "
            f"{_name(q)}: {sites_q}, as name: shape); param_kl compares posteriors of the same "
            "guide structure"
        )
    gaussian = all(isinstance(_unwrap(g), GAUSSIAN_GUIDES) for g in (p, q))
    if method == "closed_form" and not gaussian:
        raise TypeError(
            f"the closed form needs two Gaussian AutoGuides (live or frozen), got {_name(p)} and "
            f"{_name(q)}; use method='monte_carlo'"
        )
    if method != "monte_carlo" and gaussian:
        return _closed_form(p, q)
    return _monte_carlo(p, q, sites_p, args, kwargs, num_samples)
