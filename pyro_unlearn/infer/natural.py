"""The reverse KL for Gaussian guides, solved by damped moment matching (natural-gradient steps)."""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer.autoguide import AutoMultivariateNormal

from ..guides import read_gaussian, write_gaussian
from ..params import ParamSnapshot
from ..posterior import FrozenPosterior, freeze
from ..results import UnlearningResult
from ..validation import check_bool, check_in_unit_interval, check_positive, check_positive_int
from . import _moments
from ._gaussian_setup import FlatErased, prepare
from .adjusted_likelihood import check_lam, log_threshold
from .mcmc import LowESSWarning
from .reverse_kl import ImportanceWeights

__all__ = ["NaturalGradientResult", "gaussian_reverse_kl", "moment_match"]


@dataclass(kw_only=True)
class NaturalGradientResult(UnlearningResult):
    """What :func:`gaussian_reverse_kl` returns.

    Attributes:
        guide: the live guide, holding the unlearned N(μ, Σ).
        posterior: the unlearned posterior, frozen (independent of the live guide).
        original: the q(θ|D) the run started from, frozen.
        loc: μ (P,) of the unlearned posterior, in the guide's flat unconstrained space.
        covariance: Σ (P, P) (diagonal for a mean-field guide).
        ess: the effective sample size of each step's S weights.
        temperature: β of each step (1 throughout without ``anneal``).
        num_steps: the steps taken.
        likelihood: how log p(D_e|θ) was evaluated: ``"fused"`` (the model recorded once,
            :func:`~pyro_unlearn.infer.fused.erased_log_likelihood_fn`) or ``"traced: <why>"``
            (Pyro's handlers every step, and why the recording could not be used).
        collapsed: the median ESS of the last window fell below the fewest effective draws a
            moment estimate needs (P + 1 for a full covariance, 2 for a mean-field guide).
        seconds, converged: as :class:`~pyro_unlearn.results.UnlearningResult`; converged
            when the window averages of the moments stopped moving within their Monte-Carlo
            error at β = 1, without collapse and, proposing from q(θ|D), with the pooled
            weights' Pareto k̂ below its threshold.
    """

    guide: Any
    posterior: FrozenPosterior
    original: FrozenPosterior
    loc: torch.Tensor
    covariance: torch.Tensor
    ess: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    num_steps: int = 0
    collapsed: bool = False
    likelihood: str = ""


# -- checks ---------------------------------------------------------------------------------------
def _check_options(
    proposal, anneal, lam, num_samples, num_steps, step_size, window, tolerance, progress
) -> tuple:
    ImportanceWeights(proposal, anneal)  # the reverse KL's own checks of proposal and anneal
    lam = check_lam(lam)
    num_samples = check_positive_int("num_samples", num_samples)
    num_steps = check_positive_int("num_steps", num_steps)
    window = check_positive_int("window", window)
    # ρ < 1: ρ = 1 would replace q_v by one batch's moments, whose covariance may be singular
    step_size = check_in_unit_interval("step_size", step_size, open_left=True, open_right=True)
    tolerance = check_positive("tolerance", tolerance)
    check_bool("progress", progress)
    return lam, num_samples, num_steps, step_size, window, tolerance


def gaussian_reverse_kl(
    model: Callable[..., Any],
    guide: Any,
    *args: Any,
    erased: Any = None,
    plate: str | tuple[str, ...] | Mapping[str, Any] | None = None,
    posterior: FrozenPosterior | None = None,
    lam: float = 0.0,
    proposal: str = "posterior",
    anneal: float | None = None,
    num_samples: int = 1000,
    num_steps: int = 500,
    step_size: float = 0.5,
    window: int = 20,
    tolerance: float = 0.1,
    progress: bool = True,
    diagnose: bool = True,
    diagnose_samples: int = 1000,
    jit: bool = True,
    **kwargs: Any,
) -> NaturalGradientResult:
    r"""Unlearn by minimising the reverse KL over a Gaussian guide's own family, by damped
    moment matching instead of stochastic gradient steps:

    .. math:: \min_{q_v} \mathrm{KL}(\tilde p_\mathrm{adj} \,\|\, q_v), \qquad
              \tilde p_\mathrm{adj}(θ) \propto q(θ|D) \,/\, p_\mathrm{adj}(D_e|θ; λ).

    Over full-covariance Gaussians the optimum is the moment match N(E_p̃[θ], Cov_p̃[θ])
    (AutoMultivariateNormal); over mean-field ones, p̃'s marginal means and variances
    (AutoNormal, AutoDiagonalNormal). Each step draws S θ_s from the proposal r, weighs them by
    self-normalised importance sampling, w_s ∝ q(θ_s|D) / (p_adj(D_e|θ_s)^β r(θ_s)), and moves
    q_v = N(m, C) a fraction ρ of the way to the weighted moments m̂, Ĉ in the expectation
    parameters (E θ, E θθᵀ), a natural-gradient step:

    .. math:: m ← (1−ρ)m + ρ\hat m, \qquad
              C ← (1−ρ)C + ρ\hat C + ρ(1−ρ)(m − \hat m)(m − \hat m)^\top,

    positive definite for ρ < 1. Proposing from q(θ|D) (the paper's proposal), the draws and
    weights do not depend on q_v, so each step's m̂, Ĉ estimate the same moments: q_v is then
    their running average in expectation parameters (ρ_t = 1/t, the natural-gradient step of
    stochastic VI), whose fixed point is the SGD reverse KL's with S particles
    (E[Σ_s w_s ∇ log q_v(θ_s)] = 0), and the run stops, checked every W steps from 2W on, once
    its Monte-Carlo error (¼ of the symmetrised KL between the averages of the odd and the
    even steps) is at most ``tolerance`` times the KL it moved from q(θ|D), or than 0.1 nats
    where it moved less. Proposing from
    q_v, ρ is constant, shrinking in proportion when fewer than P + 1 draws are effective (2
    for a mean-field guide); the answer is the average, in expectation parameters, of the
    iterates of the last two windows at β = 1 (iterate averaging), and the run stops once
    those two windows' averages agree within their Monte-Carlo error. All in the guide's flat
    unconstrained space; log p(D_e|θ) of the S draws is the model's run in a ``pyro.plate``
    (the model must vectorise), recorded once and replayed without Pyro's handlers
    (:func:`~pyro_unlearn.infer.fused.erased_log_likelihood_fn`; ``likelihood`` in the result
    says whether it was), on the guide's device and dtype.

    Arguments:
        model: the Pyro model.
        guide: the trained live AutoNormal, AutoDiagonalNormal or AutoMultivariateNormal; it
            receives the answer (all or nothing: a failed run leaves it as it was).
        *args, **kwargs: the model's arguments: D_e alone (``erased=None``) or the full data
            with ``erased`` rows of ``plate``, as :func:`~pyro_unlearn.unlearn` takes them.
        erased, plate: as :func:`~pyro_unlearn.unlearn`'s.
        posterior: q(θ|D), frozen (default: ``pu.freeze(guide)``); the run starts from it,
            whatever the guide holds (lazy unlearning from the original posterior).
        lam: λ ∈ [0, 1] of the adjusted likelihood.
        proposal: ``"posterior"`` (the paper's: θ_s ~ q(θ|D), w_s ∝ 1/p_adj(D_e|θ_s)) or
            ``"current"`` (θ_s ~ q_v, for erasures too informative to propose from q(θ|D)).
        anneal: with ``proposal="current"``, the ESS fraction kept while β rises from 0 to 1
            (:func:`~pyro_unlearn.infer.reverse_kl.next_temperature`); ``None``: β = 1.
        num_samples: S draws per step (more than P + 1 for a full covariance).
        num_steps: the most steps.
        step_size: ρ ∈ (0, 1) of ``proposal="current"``.
        window: W steps between checks of the stopping rule (and, proposing from q_v, per
            window of the average).
        tolerance: proposing from q(θ|D), the largest Monte-Carlo error of the answer, as a
            fraction of the KL it moved from q(θ|D) (or of 0.1 nats, where it moved less).
        progress: show a tqdm bar.
        diagnose, diagnose_samples: attach the trust check
            (:func:`pyro_unlearn.trust.attach_trust`), as :func:`~pyro_unlearn.forget` does.
        jit: evaluate log p(D_e|θ) from a recording of the model (``True``) or through Pyro's
            handlers every step (``False``); the same numbers.

    Returns:
        A :class:`NaturalGradientResult`; ``converged`` is ``False`` when the stopping rule did
        not fire, β < 1 at the end, the weights collapsed (then a
        :class:`~pyro_unlearn.LowESSWarning` is raised) or, proposing from q(θ|D), the pooled
        weights of all steps are heavy-tailed (Pareto k̂ above min(1 − 1/log₁₀ n, 0.7) for n
        draws, Vehtari et al.): each step's moments are then those of a few draws, and their
        average, however stable, is not p̃'s moment match.

    Raises:
        TypeError: for a guide that is not one of the three (an AutoLowRankMultivariateNormal
            cannot hold the moment match; flows take :func:`~pyro_unlearn.forget`).
        ValueError: for bad options, a model that cannot take a particle plate, or a
            non-finite log p(D_e|θ), before the guide changes.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3.3.2: the reverse KL).

        M. E. Khan, H. Rue. The Bayesian Learning Rule. JMLR 24(281), 2023.

        M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley. Stochastic Variational Inference.
        JMLR 14, 2013 (natural-gradient steps of size ρ_t = 1/t).

        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024 (k̂ of the weights).

    Example:
        >>> import pyro, torch, pyro.distributions as dist, pyro_unlearn as pu
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> from pyro_unlearn.guides import read_gaussian, write_gaussian
        >>> pyro.clear_param_store()
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10.0).to_event(1))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu[..., 0], 1.0), obs=y)
        >>> y = torch.arange(10.0) / 10
        >>> guide = AutoMultivariateNormal(model)
        >>> _ = guide(y)
        >>> _ = write_gaussian(guide, y.mean(0, keepdim=True), torch.eye(1) / 10)  # ≈ p(μ|y)
        >>> result = gaussian_reverse_kl(model, guide, y, erased=[0, 1], plate="data",
        ...                              num_samples=2000, progress=False, diagnose=False)
        >>> loc, cov = read_gaussian(result.posterior)  # p(μ|y[2:]) = N(0.55, 1/8)
        >>> abs(float(loc) - 0.55) < 0.05, abs(float(cov) - 0.125) < 0.02, result.converged
        (True, True, True)
    """
    from ..trust import Caveats, attach_trust, check_diagnose_options  # trust imports us

    start = time.perf_counter()
    diagnose_samples = check_diagnose_options(diagnose, diagnose_samples)
    lam, num_samples, num_steps, step_size, window, tolerance = _check_options(
        proposal, anneal, lam, num_samples, num_steps, step_size, window, tolerance, progress
    )
    original, layout, fn = prepare(
        model, guide, posterior, args, kwargs, erased, plate, jit, "gaussian_reverse_kl", "rkl"
    )
    diagonal, P = not isinstance(guide, AutoMultivariateNormal), layout.size
    min_ess = 2.0 if diagonal else P + 1.0
    if num_samples <= min_ess:
        raise ValueError(
            f"num_samples must exceed {int(min_ess)} (P + 1 for a full covariance over P = {P} "
            f"dimensions, 2 for a mean-field guide), got {num_samples}"
        )
    loc, spread = read_gaussian(original, diagonal=diagonal)
    target = (loc, spread**2 if diagonal else spread)
    run = {
        "target": target,
        "proposal": proposal,
        "anneal": anneal,
        "num_samples": num_samples,
        "step_size": step_size,
        "tolerance": tolerance,
        "min_ess": min_ess,
        "loglik": FlatErased(layout, fn),
        "threshold": None if lam == 0.0 else log_threshold(lam, original.log_q_max),
    }
    beta = torch.tensor(1.0 if anneal is None else 0.0, dtype=loc.dtype, device=loc.device)
    state = _moments.MomentState(*target, beta, tail=deque(maxlen=2 * window))
    converged = _moments.iterate(state, run, num_steps, window, progress)
    final = _moments.average(list(state.tail)) if state.tail else (state.loc, state.spread)
    collapsed = _moments.collapsed(state.ess, window, min_ess)
    heavy = _moments.unreliable(state)
    if collapsed:
        warnings.warn(
            f"gaussian_reverse_kl: the importance weights collapsed (median ESS of the last "
            f"{window} steps below {min_ess:g} of {num_samples} draws): each step's moments are "
            "those of a few draws; use proposal='current' with anneal=0.5",
            LowESSWarning,
            stacklevel=2,
        )
    with ParamSnapshot.transaction():  # all or nothing
        scale = final[1].sqrt() if diagonal else None
        covariance = None if diagonal else 0.5 * (final[1] + final[1].mT)
        write_gaussian(guide, final[0], covariance, scale=scale)
        frozen = freeze(guide, *args, **kwargs)
    result = NaturalGradientResult(
        guide=guide,
        posterior=frozen,
        original=original,
        loc=final[0],
        covariance=torch.diag_embed(final[1]) if diagonal else final[1],
        ess=state.ess,
        temperature=state.temperature,
        num_steps=len(state.ess),
        collapsed=collapsed,
        likelihood="fused" if fn.fused else f"traced: {fn.reason}",
        converged=converged and not collapsed and heavy is None and float(state.beta) == 1.0,
        seconds=time.perf_counter() - start,
    )
    if not diagnose:
        result.explanation = "not diagnosed: gaussian_reverse_kl(..., diagnose=False)"
        return result
    reasons = [] if result.converged else [heavy or _moments.unsettled(state, collapsed, num_steps)]
    return attach_trust(
        result,
        model,
        original,
        args,
        kwargs,
        erased=erased,
        plate=plate,
        lam=lam,
        num_samples=diagnose_samples,
        caveats=Caveats(approximate=reasons),
    )


def moment_match(target: tuple, loglik: Callable, run: dict[str, Any], window: int, progress: bool):
    """The iteration of :func:`gaussian_reverse_kl` for any log-likelihood of flat draws (used by
    :func:`pyro_unlearn.contrib.gpytorch.inducing_reverse_kl`): ``run`` holds ``proposal``,
    ``anneal``, ``num_samples``, ``num_steps``, ``step_size``, ``tolerance``, ``min_ess`` and
    ``threshold``. Returns the answer's moments, the :class:`~._moments.MomentState`, whether
    the stopping rule fired and whether the weights collapsed."""
    run = {**run, "target": target, "loglik": loglik}
    loc = target[0]
    beta = torch.tensor(1.0 if run["anneal"] is None else 0.0, dtype=loc.dtype, device=loc.device)
    state = _moments.MomentState(*target, beta, tail=deque(maxlen=2 * window))
    settled = _moments.iterate(state, run, run["num_steps"], window, progress)
    settled = settled and _moments.unreliable(state) is None
    final = _moments.average(list(state.tail)) if state.tail else (state.loc, state.spread)
    return final, state, settled, _moments.collapsed(state.ess, window, run["min_ess"])
