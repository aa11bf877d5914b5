"""Diagnostics of an unlearned posterior against its known unnormalised target, without D_r."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..guides import is_gaussian, read_gaussian
from ..handlers import erased_log_likelihood, is_erased, unlearn
from ..infer.adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from ..infer.curvature import CURVATURES, ErasedLogLikelihood
from ..infer.particle_paths import VmappedModel, vmap_problem
from ..posterior import FrozenPosterior
from ..traces import max_plate_nesting, preserved_rng, sum_sites_per_particle, vectorization_problem
from ..validation import check_finite_data, check_positive_int
from .fit import OwnFit, erased_parts, fit_log_weights, fit_summary, target_kl
from .weights import WeightSummary, as_log_weights, summarize_weights

__all__ = ["MIN_SAMPLES", "TrustDiagnostics", "diagnose", "without_fit_check"]

#: The fewest draws diagnosed: PSIS fits its Pareto tail to the largest min(S/5, 3√S) weights.
MIN_SAMPLES = 100
_PARTICLES = "_trust_particles"


@dataclass(frozen=True)
class TrustDiagnostics:
    r"""Diagnostics of an unlearned q_u against p̃(θ) ∝ q(θ|D)/p_adj(D_e|θ), computed without D_r.

    Attributes:
        pareto_k: PSIS k̂ of log w = log p̃(θ) − log q_u(θ), θ ~ q_u (−∞: weights equal to
            rounding, q_u is p̃).
        kl: KL(q_u ‖ p̃/Z̃) ≈ log Ẑ − mean log w, log Ẑ the log-mean of the PSIS-smoothed weights.
        kl_se: its Monte-Carlo standard error (delta method).
        psis_ess: the effective sample size of the smoothed weights.
        update_ess: the ESS of v = 1/p_adj(D_e|θ), θ ~ q(θ|D): how far the erased data move q.
        update_ess_fraction: ``update_ess / num_samples``, ≈ exp(−D₂(p̃ ‖ q(θ|D))).
        update_pareto_k: PSIS k̂ of v (PSIS-LOO's k̂ for leaving D_e out).
        update_kl: KL(q(θ|D) ‖ p̃/Z̃) estimated as ``kl`` is: the error of not unlearning at
            all, the yardstick for ``kl``.
        num_samples: draws from each of q_u and q(θ|D).
        lam: λ of the adjusted likelihood.
        precision_share: for a Gaussian q(θ|D) = N(μ, Σ) with ``curvature`` given, the largest
            eigenvalue of Σ^½ H_e(μ) Σ^½, H_e = −∇² log p(D_e|θ): the share of q's precision the
            erased data carry along their most informative direction; else ``None``.
        precision_positive_definite: ``precision_share < 1``: Σ⁻¹ − H_e(μ) is positive definite
            (L-BUN's test); ``None`` without ``curvature``.
        fit_pareto_k: PSIS k̂ of p(D, θ)/q(θ|D), θ ~ q(θ|D), over all of D (Yao et al.'s check
            of q(θ|D) itself): ≥ 0.5 means q(θ|D) is a poor fit of p(θ|D), an error that
            unlearning inherits; ``None`` when the full data were not passed (``erased=None``)
            or log p(D, θ) is not read here (:func:`~pyro_unlearn.trust.fit_log_weights`).
        fit_kl, fit_kl_se: KL(q(θ|D) ‖ p(θ|D)) estimated from the same weights, and its
            Monte-Carlo error (``None`` with ``fit_pareto_k``).
        target_kl, target_kl_se: KL(p̃₀ ‖ p(θ|D_r)) for the unadjusted target
            p̃₀ ∝ q(θ|D)/p(D_e|θ), from the same draws reweighted to it
            (:func:`~pyro_unlearn.trust.target_kl`), and its Monte-Carlo error: how far the
            unlearning's own target is from the posterior retraining would give, q(θ|D)'s
            error carried over (λ's curbing is the caller's choice and is not counted).
        original_kl: KL(q(θ|D) ‖ p(θ|D_r)), the same error of not unlearning at all: the
            yardstick for ``target_kl``.
    """

    pareto_k: float
    kl: float
    kl_se: float
    psis_ess: float
    update_ess: float
    update_ess_fraction: float
    update_pareto_k: float
    update_kl: float
    num_samples: int
    lam: float
    precision_share: float | None = None
    precision_positive_definite: bool | None = None
    fit_pareto_k: float | None = None
    fit_kl: float | None = None
    fit_kl_se: float | None = None
    target_kl: float | None = None
    target_kl_se: float | None = None
    original_kl: float | None = None

    @classmethod
    def from_weights(
        cls,
        fit: WeightSummary,
        update: WeightSummary,
        num_samples: int,
        lam: float,
        precision_share: float | None = None,
        own_fit: tuple[WeightSummary, tuple[float, float], float] | None = None,
    ) -> TrustDiagnostics:
        """The diagnostics from the summaries of the weights p̃/q_u under q_u (``fit``) and
        1/p_adj(D_e|θ) under q(θ|D) (``update``), :func:`~pyro_unlearn.trust.summarize_weights`.

        Arguments:
            fit, update: the two weight summaries.
            num_samples: the draws behind each.
            lam: λ of the adjusted likelihood.
            precision_share: the erased share of q(θ|D)'s precision, if measured.
            own_fit: if measured, the summary of the weights p(D, θ)/q(θ|D) under q(θ|D),
                ``(target_kl, target_kl_se)`` and ``original_kl``.

        Returns:
            The :class:`TrustDiagnostics`.

        Example::

            TrustDiagnostics.from_weights(fit, update, num_samples=1000, lam=0.0)
        """
        return cls(
            pareto_k=fit.pareto_k,
            kl=fit.kl,
            kl_se=fit.kl_se,
            psis_ess=fit.ess,
            update_ess=update.raw_ess,
            update_ess_fraction=update.raw_ess / num_samples,
            update_pareto_k=update.pareto_k,
            update_kl=update.kl,
            num_samples=num_samples,
            lam=lam,
            precision_share=precision_share,
            precision_positive_definite=None if precision_share is None else precision_share < 1.0,
            fit_pareto_k=None if own_fit is None else own_fit[0].pareto_k,
            fit_kl=None if own_fit is None else own_fit[0].kl,
            fit_kl_se=None if own_fit is None else own_fit[0].kl_se,
            target_kl=None if own_fit is None else own_fit[1][0],
            target_kl_se=None if own_fit is None else own_fit[1][1],
            original_kl=None if own_fit is None else own_fit[2],
        )

    def as_dict(self) -> dict[str, Any]:
        """The attributes by name (floats, ints, bools, ``None``): a JSON row."""
        return asdict(self)


_FIT_CHECK = contextvars.ContextVar("pyro_unlearn_fit_check", default=True)


@contextlib.contextmanager
def without_fit_check() -> Iterator[None]:
    """Within this block :func:`diagnose` skips the check of q(θ|D) itself (``fit_pareto_k``
    and the rest stay ``None``): for a posterior that was not fitted to all of the data passed,
    as a chained request ledger's serve from the previous unlearned posterior, whose rows
    forgotten earlier are still in D; the check would hold it to them.

    Example:
        >>> with without_fit_check():
        ...     pass  # pu.forget(model, guide, *D, erased=rows, posterior=previous, ...)
    """
    token = _FIT_CHECK.set(False)
    try:
        yield
    finally:
        _FIT_CHECK.reset(token)


def diagnose(
    model: Callable[..., Any],
    posterior: FrozenPosterior,
    original: FrozenPosterior,
    *args: Any,
    erased: Any = None,
    plate: str | tuple[str, ...] | Mapping[str, Any] | None = None,
    lam: float = 0.0,
    num_samples: int = 1000,
    curvature: str | None = None,
    vmap: bool = False,
    **kwargs: Any,
) -> TrustDiagnostics:
    r"""Check an unlearned q_u against the target it approximates, known up to its constant:

    .. math:: \log \tilde p(θ) = \log q(θ|D) − \log p_\mathrm{adj}(D_e|θ; λ), \qquad
              \log w_s = \log \tilde p(θ_s) − \log q_u(θ_s), \quad θ_s \sim q_u,

    as variational approximations are checked against a posterior: the PSIS k̂ of w, and
    KL(q_u ‖ p̃/Z̃) = log Z̃ − E_{q_u}[log w]. Then how large the request is, from θ_s ~ q(θ|D):
    the ESS (Σv)²/Σv² of v_s = 1/p_adj(D_e|θ_s), near 1 when the erased data move the posterior
    further than q(θ|D) reaches (an error no q_u repairs). When the full data are passed
    (``erased`` given), q(θ|D) itself is checked too, from S more draws: the k̂ of
    p(D, θ)/q(θ|D) and KL(q(θ|D) ‖ p(θ|D)) (``fit_pareto_k``, ``fit_kl``), p̃'s own error
    where q(θ|D) is a poor approximation. Densities are those of the guides' unconstrained
    space; draws run in one ``pyro.plate`` (the model must vectorise), on the
    guides' device, leaving the caller's random stream as it was. Only k̂ and the sums over
    draws are computed on the CPU (ArviZ's PSIS is NumPy).

    Arguments:
        model: the Pyro model.
        posterior: the unlearned q_u, frozen (a result's ``.posterior``).
        original: the q(θ|D) it was unlearned from (frozen, same guide structure).
        *args, **kwargs: the model's arguments: D_e alone (``erased=None``) or the full data
            with ``erased`` rows of ``plate``, as :func:`~pyro_unlearn.unlearn` takes them. On
            a named subsampling plate holding more erased rows than its batch, log p(D_e|θ) is
            read in parts of at most a batch (:func:`~pyro_unlearn.trust.erased_parts`).
        erased, plate: as :func:`~pyro_unlearn.unlearn`'s.
        lam: λ ∈ [0, 1] of the adjusted likelihood, as the unlearning used.
        num_samples: S ≥ :data:`MIN_SAMPLES` draws from each posterior.
        curvature: for a Gaussian q(θ|D), a structure of H_e (``"full"``, ``"ggn"``,
            ``"diag"``, ``"ggn_diag"``) to measure the erased precision at μ; ``None`` skips it.
        vmap: for a model that cannot take the particle plate, run it at every draw by
            ``torch.func.vmap`` (:class:`~pyro_unlearn.infer.particle_paths.VmappedModel`, as
            the losses do; q(θ|D)'s own fit is then not checked); ``False`` refuses such a
            model.

    Returns:
        The :class:`TrustDiagnostics`.

    Raises:
        TypeError: when a posterior is not frozen, or ``curvature`` is asked of a q(θ|D) that
            is not Gaussian.
        ValueError: for bad options, posteriors scoring other sites, a model that cannot
            take a particle plate, or a non-finite target (log p(D_e|θ) = −∞ at some draw).

    References:
        Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
        Variational Inference. ICML 2018.

        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:
        >>> import pyro, pyro.distributions as dist, pyro_unlearn as pu
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_unlearn.trust import verdict
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def exact(y):  # p(μ|y), frozen
        ...     guide = AutoNormal(model)
        ...     _ = guide(y)
        ...     n = len(y) + 0.01  # the prior's precision is 1/10²
        ...     mean, scale = y.sum(0, keepdim=True) / n, torch.tensor([n**-0.5])
        ...     return pu.freeze(pu.guides.write_gaussian(guide, mean, scale=scale))
        >>> y = torch.arange(10.0) / 10
        >>> full, retrained = exact(y), exact(y[2:])
        >>> d = diagnose(model, retrained, full, y, erased=[0, 1], plate="data")
        >>> d.pareto_k < 0.5, abs(d.kl) < 1e-3, d.update_ess_fraction > 0.5
        (True, True, True)
        >>> verdict(d).label
        'trusted'
        >>> verdict(diagnose(model, full, full, y, erased=[0, 1], plate="data")).label  # not moved
        'retrain'
    """
    _check_call(posterior, original, curvature, args, kwargs)
    lam, num_samples = check_lam(lam), check_positive_int("num_samples", num_samples)
    if num_samples < MIN_SAMPLES:
        raise ValueError(f"num_samples must be at least {MIN_SAMPLES}, got {num_samples}")
    with torch.no_grad(), poutine.block(), preserved_rng(args, kwargs):
        parts = erased_parts(erased, plate, _batch_size(model, original, plate, args, kwargs))
        particle_models = [
            _particle_model(
                unlearn(model, erased=part, plate=plate), posterior, args, kwargs, num_samples, vmap
            )
            for part in parts
        ]
        wrapped, dim, vmapped = [m for m, _, _ in particle_models], *particle_models[0][1:]
        # λ = 0 needs no log q* (for a flow, a numeric search)
        threshold = None if lam == 0.0 else log_threshold(lam, original.log_q_max)
        # common random numbers: q_u and q(θ|D) draw from the same stream, so that the two
        # KL estimates the verdict compares are correlated (equal when q_u is q(θ|D))
        with preserved_rng(args, kwargs):
            log_q_u, log_q, log_lik = _draw(
                wrapped, posterior, original, args, kwargs, num_samples, dim
            )
        _, log_q_d, log_lik_d = _draw(wrapped, original, original, args, kwargs, num_samples, dim)
        own = None
        if erased is not None and not vmapped and _FIT_CHECK.get():
            own = _fit_check(model, original, args, kwargs, erased, plate, num_samples, dim)
        if threshold is not None:
            log_lik = adjusted_log_likelihood(log_lik, log_q, threshold)
            log_lik_d = adjusted_log_likelihood(log_lik_d, log_q_d, threshold)
    fit = summarize_weights(as_log_weights(log_q - log_lik - log_q_u, "log p̃(θ) − log q_u(θ)"))
    update = summarize_weights(as_log_weights(-log_lik_d, "−log p_adj(D_e|θ)"))
    share = None
    if curvature is not None:
        share = _precision_share(model, original, args, kwargs, erased, plate, curvature)
    own_fit = None if own is None else _own_fit(own)
    return TrustDiagnostics.from_weights(fit, update, num_samples, lam, share, own_fit)


def _fit_check(
    model: Callable,
    original: FrozenPosterior,
    args: tuple,
    kwargs: dict,
    erased: Any,
    plate: Any,
    num_samples: int,
    dim: int,
) -> OwnFit | None:
    """:func:`~pyro_unlearn.trust.fit_log_weights`, or ``None`` where the model's
    log p(D, θ) cannot be read."""
    try:
        return fit_log_weights(model, original, args, kwargs, erased, plate, num_samples, dim)
    except (ValueError, TypeError, RuntimeError, NotImplementedError):
        return None


def _own_fit(own: OwnFit) -> tuple | None:
    """(summary of p(D, θ)/q(θ|D), KL(p̃₀ ‖ p(θ|D_r)) and its se, KL(q(θ|D) ‖ p(θ|D_r))), or
    ``None``."""
    summary = fit_summary(own.log_weights)
    if summary is None or not bool(torch.isfinite(own.log_lik).all()):
        return None
    to_retrained = own.log_weights - own.log_lik  # log p(D_r, θ) − log q(θ|D)
    original = fit_summary(to_retrained)
    target = target_kl(to_retrained + own.log_lik, -own.log_lik)
    return summary, target, math.inf if original is None else original.kl


def _check_call(
    posterior: Any, original: Any, curvature: str | None, args: tuple, kwargs: dict
) -> None:
    for name, value in (("posterior", posterior), ("original", original)):
        if not isinstance(value, FrozenPosterior):
            raise TypeError(
                f"{name} must be a FrozenPosterior (pu.freeze(guide), or a result's "
                f".posterior / .original), got {type(value).__name__}"
            )
    if set(posterior.sites) != set(original.sites):
        raise ValueError(
            f"the unlearned posterior scores sites {sorted(posterior.sites)}, q(θ|D) "
            f"{sorted(original.sites)}: both must be frozen from guides of the same structure"
        )
    if curvature is not None and curvature not in CURVATURES:
        raise ValueError(f"curvature must be None or one of {CURVATURES}, got {curvature!r}")
    if curvature is not None and not is_gaussian(original):
        raise TypeError(
            f"curvature needs a Gaussian q(θ|D) (one of pu.guides.GAUSSIAN_GUIDES), got a "
            f"{type(original.guide).__name__}; pass curvature=None"
        )
    check_finite_data(args, kwargs)


def _particle_model(
    model: Callable, guide: FrozenPosterior, args: tuple, kwargs: dict, num: int, vmap: bool
) -> tuple[Callable, int, bool]:
    """The model to run in the particle plate (itself, or vmapped at every particle), the
    plate's dim (left of every plate of the guide and the model), and whether it is vmapped."""
    guide_once = poutine.trace(guide).get_trace(*args, **kwargs)
    model_once = poutine.trace(poutine.replay(model, trace=guide_once)).get_trace(*args, **kwargs)
    nesting = max(max_plate_nesting(guide_once), max_plate_nesting(model_once))
    problem = vectorization_problem(model, guide, args, kwargs, 2, nesting)
    if problem is None:
        return model, -nesting - 1, False
    why = f"diagnose draws θ in a pyro.plate, which the model cannot take: {problem}"
    if not vmap:
        raise ValueError(why)
    vmap_why = vmap_problem(model, guide, args, kwargs, 2, nesting)
    if vmap_why is not None:
        raise ValueError(f"{why}; nor can torch.func.vmap run it: {vmap_why}")
    prototype = poutine.trace(model).get_trace(*args, **kwargs)
    return VmappedModel(model, prototype, num, -nesting - 1, "erased"), -nesting - 1, True


def _batch_size(
    model: Callable, original: FrozenPosterior, plate: Any, args: tuple, kwargs: dict
) -> int | None:
    """The ``subsample_size`` of the model's plate ``plate`` (``None``: it does not subsample,
    or is not one named plate)."""
    if not isinstance(plate, str):
        return None
    guide_once = poutine.trace(original).get_trace(*args, **kwargs)
    once = poutine.trace(poutine.replay(model, trace=guide_once)).get_trace(*args, **kwargs)
    node = once.nodes.get(plate)
    if node is None or not site_is_subsample(node):
        return None
    size, batch = int(node["fn"].size), node["fn"].subsample_size
    return None if batch is None or int(batch) >= size else int(batch)


def _draw(
    models: list[Callable],
    source: FrozenPosterior,
    other: FrozenPosterior,
    args: tuple,
    kwargs: dict,
    num: int,
    dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """θ_s ~ ``source`` in one plate: (log source(θ_s), log other(θ_s), log p(D_e|θ_s)), each
    ``(S,)``, log-densities in the guides' unconstrained space; log p(D_e|θ_s) summed over the
    ``models``, one per part of the erased rows (:func:`~pyro_unlearn.trust.erased_parts`)."""
    particles = pyro.plate(_PARTICLES, num, dim=dim)
    draw = poutine.trace(particles(source)).get_trace(*args, **kwargs)
    draw.compute_log_prob(site_filter=lambda name, _: name in source.sites)
    log_source = sum_sites_per_particle(draw, source.sites, dim, num)
    log_other = log_source
    if other is not source:
        scored = poutine.trace(poutine.replay(particles(other), trace=draw)).get_trace(
            *args, **kwargs
        )
        scored.compute_log_prob(site_filter=lambda name, _: name in other.sites)
        log_other = sum_sites_per_particle(scored, other.sites, dim, num)
    log_lik = 0.0
    for model in models:
        trace = poutine.trace(poutine.replay(particles(model), trace=draw)).get_trace(
            *args, **kwargs
        )
        trace.compute_log_prob(site_filter=is_erased)
        log_lik = log_lik + erased_log_likelihood(trace, dim, num)
    return log_source, log_other, log_lik


def _precision_share(
    model: Callable,
    original: FrozenPosterior,
    args: tuple,
    kwargs: dict,
    erased: Any,
    plate: Any,
    structure: str,
) -> float:
    """The largest eigenvalue of Σ^½ H_e(μ) Σ^½ for q(θ|D) = N(μ, Σ): below 1 exactly when
    Σ⁻¹ − H_e(μ) is positive definite."""
    loc, covariance = read_gaussian(original)
    loglik = ErasedLogLikelihood(model, original, *args, erased=erased, plate=plate, **kwargs)
    loglik.check(loc)  # clear errors (subsampling, uncovered latents) before torch.func
    h = loglik.curvature(loc, structure)
    variances = covariance.diagonal()
    if h.dim() == 1 and bool((covariance == torch.diag_embed(variances)).all()):
        return float((variances * h).max())
    tril = torch.linalg.cholesky(covariance)
    h = torch.diag_embed(h) if h.dim() == 1 else h
    inner = tril.mT @ h @ tril
    return float(torch.linalg.eigvalsh(0.5 * (inner + inner.mT))[-1])
