"""Yao et al.'s check of q(θ|D) itself against p(D, θ), when the full data are at hand."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_factor, site_is_subsample

from ..handlers import erased_log_likelihood, is_erased, unlearn
from ..handlers.rows import as_tensor
from ..posterior import FrozenPosterior
from ..traces import sum_sites_per_particle
from .weights import WeightSummary, pareto_smooth, summarize_weights

__all__ = ["OwnFit", "erased_parts", "fit_log_weights", "fit_summary", "target_kl"]

_PARTICLES = "_fit_particles"


def _latent(trace: Any) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


class OwnFit(NamedTuple):
    """What :func:`fit_log_weights` reads at θ_s ~ q(θ|D), each ``(S,)``."""

    #: log p(D, θ_s) − log q(θ_s|D), densities in the model's space.
    log_weights: torch.Tensor
    #: log p(D_e|θ_s), unadjusted.
    log_lik: torch.Tensor


def fit_log_weights(
    model: Callable[..., Any],
    original: FrozenPosterior,
    args: tuple,
    kwargs: dict,
    erased: Any,
    plate: Any,
    num_samples: int,
    dim: int,
) -> OwnFit | None:
    r"""log w_s = log p(D, θ_s) − log q(θ_s|D), θ_s ~ q(θ|D), over all of D, and log p(D_e|θ_s):

    .. math:: \log w_s = \log p(θ_s) + \textstyle\sum_{i \in D} \log p(y_i|θ_s)
              − \log q(θ_s|D),

    densities in the model's (constrained) space: the guide's whole trace is scored, its
    auxiliary sites and the Jacobians of its transforms alike, so the Jacobians cancel. Every
    row of ``plate`` counts once, unscaled: a subsampling plate of batch B is evaluated in
    ⌈N/B⌉ chunks of rows flagged by :func:`~pyro_unlearn.unlearn` (which replaces the batch by
    the flagged rows) and the chunks' log-likelihoods are summed. Runs under the caller's
    ``torch.no_grad()`` and ``poutine.block()``.

    Arguments:
        model: the Pyro model (not wrapped).
        original: q(θ|D), frozen.
        args, kwargs: the model's arguments, the full data D.
        erased: the erased rows of ``plate``.
        plate: the name of the plate the erased rows index.
        num_samples: S, the draws of q(θ|D).
        dim: the particle plate's dim, left of every plate of the model and guide.

    Returns:
        An :class:`OwnFit`, or ``None`` where log p(D, θ) is not the sum read here: a
        ``plate`` that is not one named plate of the model, an observed site outside it, a
        ``pyro.factor``, or a latent site scaled by a subsampling plate (local latents).

    References:
        Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
        Variational Inference. ICML 2018.

    Example (:func:`~pyro_unlearn.trust.diagnose` runs it; ``tests/test_trust_fit.py`` checks
    it against closed forms)::

        with torch.no_grad(), pyro.poutine.block():
            own = fit_log_weights(model, pu.freeze(guide, x, y), (x, y), {}, rows, "data", 1000, -2)
        fit_summary(own.log_weights).pareto_k  # < 0.5: q(θ|D) fits p(θ|D)
    """
    if not isinstance(plate, str):
        return None
    with poutine.block():
        once = poutine.trace(poutine.replay(model, trace=poutine.trace(original).get_trace(
            *args, **kwargs))).get_trace(*args, **kwargs)  # fmt: skip
    node = once.nodes.get(plate)
    if node is None or not site_is_subsample(node):
        return None
    size, batch = int(node["fn"].size), node["fn"].subsample_size
    particles = pyro.plate(_PARTICLES, num_samples, dim=dim)
    draw = poutine.trace(particles(original)).get_trace(*args, **kwargs)
    draw.compute_log_prob(site_filter=lambda _, site: not site["is_observed"])
    log_q = sum_sites_per_particle(draw, _latent(draw), dim, num_samples)
    total = None
    rows = torch.arange(size, device=log_q.device)
    for chunk in rows.split(size if batch is None else int(batch)):
        wrapped = particles(unlearn(model, erased=chunk, plate=plate))
        trace = poutine.trace(poutine.replay(wrapped, trace=draw)).get_trace(*args, **kwargs)
        if total is None:  # the model's structure: the first chunk shows it
            latent = _latent(trace)
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                if site_is_factor(site) or (site["is_observed"] and not is_erased(name, site)):
                    return None
                if name in latent and not _unscaled(site["scale"]):
                    return None
            trace.compute_log_prob(site_filter=lambda name, _, names=tuple(latent): name in names)
            total = sum_sites_per_particle(trace, latent, dim, num_samples) - log_q
        trace.compute_log_prob(site_filter=is_erased)
        total = total + erased_log_likelihood(trace, dim, num_samples)
    log_lik = 0.0
    for part in erased_parts(erased, plate, None if batch is None else int(batch)):
        wrapped = particles(unlearn(model, erased=part, plate=plate))
        trace = poutine.trace(poutine.replay(wrapped, trace=draw)).get_trace(*args, **kwargs)
        trace.compute_log_prob(site_filter=is_erased)
        log_lik = log_lik + erased_log_likelihood(trace, dim, num_samples)
    return OwnFit(total, log_lik)


def erased_parts(erased: Any, plate: Any, batch: int | None) -> list[Any]:
    r"""The erased rows of one named subsampling plate of batch B, split into parts of at most
    B rows, so that log p(D_e|θ) = Σ_parts log p(D_part|θ) is read exactly, every erased row
    once: given N_e > B erased rows, :func:`~pyro_unlearn.unlearn` draws B of them and scales
    them by N_e/B, an unbiased but random estimate (a different function of θ at every
    evaluation, whose exponential, p̃'s weights, is biased).

    Arguments:
        erased: the erased rows (indices or a boolean mask) of ``plate``, or anything else
            :func:`~pyro_unlearn.unlearn` takes (returned whole).
        plate: the plate's name (a tuple or mapping of plates is returned whole).
        batch: the plate's ``subsample_size`` B (``None``: it does not subsample).

    Returns:
        A list of row specifications for :func:`~pyro_unlearn.unlearn`, ``[erased]`` where
        nothing needs splitting.

    Example:
        >>> [part.tolist() for part in erased_parts([0, 3, 5, 7, 9], "data", 2)]
        [[0, 3], [5, 7], [9]]
        >>> erased_parts([0, 3], "data", 2)
        [[0, 3]]
    """
    if batch is None or not isinstance(plate, str) or isinstance(erased, Mapping):
        return [erased]
    try:
        rows = as_tensor(erased, "erased")
    except TypeError:
        return [erased]
    if rows.dtype == torch.bool:
        if rows.dim() != 1:
            return [erased]
        rows = rows.nonzero().squeeze(-1)
    if rows.dim() != 1 or len(rows) <= batch:
        return [erased]
    return list(rows.split(batch))


def _unscaled(scale: Any) -> bool:
    return bool(torch.all(torch.as_tensor(scale) == 1.0))


def target_kl(log_ratio: torch.Tensor, log_v: torch.Tensor) -> tuple[float, float]:
    r"""KL(p̃ ‖ p) and its Monte-Carlo standard error, from draws θ_s ~ q weighted to p̃ by
    v_s ∝ p̃(θ_s)/q(θ_s), given the log-ratio l_s = log p(θ_s) − log p̃(θ_s) up to a constant:

    .. math:: \mathrm{KL}(\tilde p \,\|\, p) = \log \mathbb{E}_{\tilde p}[e^{l}]
              − \mathbb{E}_{\tilde p}[l], \qquad
              \mathbb{E}_{\tilde p}[f] ≈ \textstyle\sum_s \hat v_s f(θ_s),

    v̂ the Pareto-smoothed, self-normalised weights; the error is the delta method's, with
    influence (v_s/v̄)(e^{l_s}/A − l_s − 1 + B), A and B the two expectations. With
    p = p(θ|D_r) ∝ p(D, θ)/p(D_e|θ) and p̃ ∝ q(θ|D)/p(D_e|θ) it is the distance from the
    unlearning's target to the posterior retraining would give, without D_r: the error q(θ|D)
    hands to every unlearning of it.

    Arguments:
        log_ratio: l_s, ``(S,)``.
        log_v: log v_s, ``(S,)``.

    Returns:
        ``(kl, se)`` as floats (``(+∞, nan)`` where p puts no mass at some draw).

    Example:
        >>> theta = torch.randn(4000, generator=torch.Generator().manual_seed(0))  # q = p̃ = N(0, 1)
        >>> l = -0.5 * (theta - 0.3) ** 2 + 0.5 * theta**2  # p = N(0.3, 1)
        >>> kl, se = target_kl(l, torch.zeros(4000))
        >>> abs(kl - 0.045) < 3 * se  # KL = 0.3²/2
        True
    """
    ratio = log_ratio.detach().to("cpu", torch.float64)
    if bool((ratio == -math.inf).any()):
        return math.inf, math.nan
    smoothed, _ = pareto_smooth(log_v.detach().to("cpu", torch.float64).numpy())
    log_weights = torch.from_numpy(smoothed).log_softmax(0)
    log_mean_exp = float((log_weights + ratio).logsumexp(0))  # log E_p̃[e^l], no underflow
    weights, mean = log_weights.exp(), float((log_weights.exp() * ratio).sum())
    kl = log_mean_exp - mean
    influence = len(ratio) * weights * ((ratio - log_mean_exp).exp() - ratio + mean - 1.0)
    return kl, float(influence.std()) / math.sqrt(len(ratio))


def fit_summary(log_weights: torch.Tensor | None) -> WeightSummary | None:
    """k̂, KL(q(θ|D) ‖ p(θ|D)) with its standard error and the ESS of :func:`fit_log_weights`'
    weights (:func:`~pyro_unlearn.trust.summarize_weights`): k̂ and the KL +∞ where q(θ|D) puts
    mass where p(D, θ) = 0, ``None`` where there are no weights or they are NaN or +∞.

    Arguments:
        log_weights: ``(S,)``, or ``None``.

    Returns:
        A :class:`~pyro_unlearn.trust.WeightSummary`, or ``None``.

    Example:
        >>> fit_summary(torch.zeros(200)).pareto_k  # q(θ|D) ∝ p(D, θ): bounded weights
        -inf
        >>> fit_summary(torch.tensor([0.0, -math.inf] * 100)).kl
        inf
    """
    if log_weights is None:
        return None
    values = log_weights.detach().to("cpu", torch.float64)
    if bool(torch.isnan(values).any() or (values == math.inf).any()):
        return None
    if bool((values == -math.inf).any()):
        return WeightSummary(math.inf, math.inf, math.nan, 0.0, 0.0)
    return summarize_weights(values.numpy())
