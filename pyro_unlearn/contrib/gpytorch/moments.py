"""The reverse KL for a GPyTorch q(u), solved by damped moment matching in q(u)'s own geometry."""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import gpytorch
import torch
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.variational import MeanFieldVariationalDistribution
from tqdm import tqdm

from ...infer.adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from ...infer.mcmc import LowESSWarning
from ...infer.natural import NaturalGradientResult, moment_match
from ...infer.reverse_kl import ImportanceWeights, next_temperature
from ...posterior import FrozenPosterior
from ...validation import check_bool, check_in_unit_interval, check_positive, check_positive_int
from .conditional import (
    check_gp_data,
    gp_inputs,
    missing_allowed,
    per_output_log_likelihood,
    projections,
)
from .inducing import (
    InducingGuide,
    freeze_inducing,
    inducing_distribution,
    set_inducing_distribution,
)
from .strategy import variational_strategy

__all__ = ["ErasedInducingLikelihood", "Tempered", "inducing_reverse_kl"]


class ErasedInducingLikelihood:
    r"""u (S, M) ↦ log p̃(D_e|u_s) (S,), the SVGP bound's likelihood of the erased data
    (:func:`~pyro_unlearn.contrib.gpytorch.inducing_log_likelihood`), for a batch of draws.

    For a :class:`~gpytorch.likelihoods.GaussianLikelihood` it is a quadratic in
    :math:`v` (v = u whitened, :math:`L^{-1}(u - m(Z))` otherwise):

    .. math:: \log \tilde p(D_e|u) = -\tfrac12 \big(c - 2 b^\top v + v^\top A v\big), \quad
              A = \sum_i \frac{a_i a_i^\top}{σ^2}, \; b = \sum_i \frac{a_i r_i}{σ^2}, \;
              c = \sum_i \frac{r_i^2 + s_i}{σ^2} + \log(2πσ^2),

    with :math:`r_i = y_i - m(x_i)`, :math:`s_i = k(x_i, x_i) - \|a_i\|^2`: the statistics are
    summed once over D_e in chunks (O(N_e M²) for N_e erased rows), each evaluation costs
    O(S M²). Other likelihoods (and GPyTorch's masked missing targets) are evaluated row by
    row, batched over the draws, from D_e's kernel algebra computed once.

    Arguments:
        gp: a supported single-output ``ApproximateGP`` (hyperparameters held fixed).
        likelihood: its likelihood.
        inputs, targets: D_e, ``(N, D)`` or ``(N,)`` and ``(N,)``.
        chunk_size: erased points per chunk.

    Attributes:
        kind: ``"quadratic"`` or ``"rows"``: how it evaluates.
    """

    def __init__(self, gp, likelihood, inputs, targets, chunk_size: int = 4096) -> None:
        self.gp, self.likelihood, self.targets = gp, likelihood, targets
        self.inputs, self.chunk_size = gp_inputs(inputs), chunk_size
        self.chunks = projections(variational_strategy(gp), self.inputs, chunk_size)
        quadratic = type(likelihood) is GaussianLikelihood and not missing_allowed()
        self.kind = "quadratic" if quadratic else "rows"
        if quadratic:
            self._statistics()

    @torch.no_grad()
    def _statistics(self) -> None:
        first = self.chunks[0]
        M = first.a.shape[-2]
        A = first.a.new_zeros(M, M)
        b, c = first.a.new_zeros(M), first.a.new_zeros(())
        noise = self.likelihood.noise.detach().to(first.a).reshape(())
        for start, proj in zip(
            range(0, self.inputs.shape[-2], self.chunk_size), self.chunks, strict=True
        ):
            r = self.targets[start : start + self.chunk_size].to(first.a) - proj.mean
            A = A + proj.a @ proj.a.mT
            b = b + proj.a @ r
            c = c + (r.square() + proj.var).sum()
        n = self.inputs.shape[-2]
        self.A, self.b = A / noise, b / noise
        self.c = c / noise + n * (noise.log() + torch.log(2 * noise.new_tensor(torch.pi)))
        self.whitened, self.chol, self.mean_z = first.whitened, first.chol, first.mean_z

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "rows":
            return per_output_log_likelihood(
                self.gp, self.likelihood, u, self.inputs, self.targets, self.chunk_size,
                self.chunks,
            )  # fmt: skip
        v = u
        if not self.whitened:
            v = torch.linalg.solve_triangular(self.chol, (u - self.mean_z).mT, upper=False).mT
        return -0.5 * (self.c - 2.0 * v @ self.b + ((v @ self.A) * v).sum(-1))


@dataclass
class Tempered:
    """The record of :func:`follow`: ESS and β per step, whether the stopping rule fired."""

    ess: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    settled: bool = False


def _average(tail: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The moments of the equal mixture of the iterates (averaging in expectation parameters)."""
    locs = torch.stack([m for m, _ in tail])
    loc = locs.mean(0)
    gaps = locs - loc
    return loc, torch.stack([c for _, c in tail]).mean(0) + gaps.mT @ gaps / len(tail)


def _kl(a: tuple, b: tuple) -> float:
    p, q = (torch.distributions.MultivariateNormal(m, c) for m, c in (a, b))
    return float(torch.distributions.kl_divergence(p, q))


def _cv_moments(z, w, loc, chol) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The weighted moments of u = m + L z with the draws' own error as control variate:
    m̂ = m + L d and Ĉ = L (I + Σ_s δ_s z_s z_sᵀ − d dᵀ) Lᵀ, δ_s = w_s − 1/S, d = Σ_s δ_s z_s,
    i.e. Σ w g(u) − (1/S Σ g(u) − E_{q_v} g) for g = u and uuᵀ (exact where p̃_β = q_v)."""
    delta = w - 1.0 / w.numel()
    d = delta @ z
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    inner = eye + (z * delta[:, None]).mT @ z - torch.outer(d, d)
    return loc + chol @ d, chol @ inner @ chol.mT


def follow(target: tuple, loglik, run: dict, window: int, progress: bool) -> tuple:
    r"""Damped moment matching proposing from q_v = N(m, C) (full covariance), β annealed by
    the conditional ESS: each step draws u = m + L z (L Lᵀ = C), weighs them by
    q(u|D)/(q_v(u) p̃(D_e|u)^β) and moves (m, C) a fraction ρ (shrunk when fewer than M + 1
    draws are effective) of the way to their control-variated weighted moments
    (:func:`_cv_moments`; the plain ones where that step would not be positive definite), in
    the expectation parameters. The answer averages the iterates of the last two windows at
    β = 1; it stops once their averages agree within 3k/(ESS·W) nats (k moment parameters).
    Returns ``((m, C), record)``."""
    loc_d, cov_d = target
    M = loc_d.numel()
    prec_d = torch.linalg.solve_triangular(
        torch.linalg.cholesky(cov_d), torch.eye(M, dtype=loc_d.dtype, device=loc_d.device),
        upper=False,
    )  # fmt: skip
    const_d = 0.5 * M * math.log(2 * math.pi) - prec_d.diagonal().log().sum()
    loc, cov, S = loc_d, cov_d, run["num_samples"]
    beta = torch.tensor(0.0 if run["anneal"] else 1.0, dtype=loc.dtype, device=loc.device)
    record, tail, k = Tempered(), deque(maxlen=2 * window), M + M * (M + 1) // 2
    with (
        torch.no_grad(),
        tqdm(total=run["num_steps"], desc="rKL (moments)", disable=not progress) as bar,
    ):
        for _ in range(run["num_steps"]):
            chol = torch.linalg.cholesky(cov)
            z = torch.randn((S, M), dtype=loc.dtype, device=loc.device)
            u = loc + z @ chol.mT
            e = (u - loc_d) @ prec_d.mT
            log_base = 0.5 * ((z * z).sum(-1) - (e * e).sum(-1)) + chol.diagonal().log().sum()
            log_q_d = -0.5 * (e * e).sum(-1) - const_d
            log_lik = _finite(run, u, loglik(u), log_q_d)
            if run["anneal"] is not None:
                beta = next_temperature(log_base, log_lik, beta, run["anneal"])
            w = torch.softmax(log_base - beta * log_lik, 0)
            ess = float(1.0 / (w * w).sum())
            record.ess.append(ess)
            record.temperature.append(float(beta))
            rho = run["step_size"] * min(1.0, ess / run["min_ess"])
            loc, cov = _mix(loc, cov, u, z, w, chol, rho)
            bar.update()
            bar.set_postfix(ess=f"{ess:.0f}", beta=f"{float(beta):.3g}")
            if float(beta) < 1.0:
                continue
            tail.append((loc, cov))
            if len(tail) == 2 * window:
                older, newer = _average(list(tail)[:window]), _average(list(tail)[window:])
                mean_ess = sum(record.ess[-2 * window :]) / (2 * window)
                if _kl(newer, older) < 3.0 * k / (mean_ess * window):
                    record.settled = True
                    break
    return (_average(list(tail)) if tail else (loc, cov)), record


def _finite(run: dict, u, log_lik, log_q_d) -> torch.Tensor:
    """log p̃(D_e|u), adjusted at λ > 0; refuses non-finite values."""
    bad = int((~torch.isfinite(log_lik)).sum())
    if bad:
        raise ValueError(
            f"log p(D_e|u) is not finite at {bad} of {u.shape[0]} draws: p̃ ∝ q(u|D)/p(D_e|u) "
            "is not defined there"
        )
    if run["threshold"] is None:
        return log_lik
    return adjusted_log_likelihood(log_lik, log_q_d, run["threshold"])


def _mix(loc, cov, u, z, w, chol, rho) -> tuple[torch.Tensor, torch.Tensor]:
    """One damped step to the control-variated moments, or to the plain ones where that would
    not be positive definite."""
    for plain in (False, True):
        if plain:
            new_loc = w @ u
            centred = u - new_loc
            new_cov = (centred * w[:, None]).mT @ centred
        else:
            new_loc, new_cov = _cv_moments(z, w, loc, chol)
        gap = loc - new_loc
        moved = (1 - rho) * cov + rho * new_cov + rho * (1 - rho) * torch.outer(gap, gap)
        moved = 0.5 * (moved + moved.mT)
        if plain or int(torch.linalg.cholesky_ex(moved)[1]) == 0:
            return (1 - rho) * loc + rho * new_loc, moved
    raise AssertionError  # unreachable


def _check(gp, likelihood, posterior, x_e, y_e, options: dict) -> tuple:
    """Every check, before anything moves: q(u|D) of the GP's shape, D_e, the options."""
    strategy = variational_strategy(gp)
    variational = strategy._variational_distribution
    if len(variational.batch_shape):
        raise ValueError(
            f"inducing_reverse_kl takes a single-output GP, this q(u) has batch shape "
            f"{tuple(variational.batch_shape)}; use VariationalReverseKL with gpytorch.optim.NGD"
        )
    if not isinstance(likelihood, gpytorch.likelihoods.Likelihood):
        raise TypeError(
            f"likelihood must be a GPyTorch likelihood, got {type(likelihood).__name__}"
        )
    if posterior is None:
        posterior = freeze_inducing(gp)
    elif not isinstance(posterior, FrozenPosterior) or not isinstance(
        posterior.guide, InducingGuide
    ):
        raise TypeError("posterior must be q(u|D) frozen by freeze_inducing(gp)")
    q = inducing_distribution(posterior)
    if q.mean.shape != variational.shape():
        raise ValueError(
            f"the frozen q(u|D) has shape {tuple(q.mean.shape)}, this GP's q(u) "
            f"{tuple(variational.shape())}"
        )
    check_gp_data(strategy, x_e, y_e)
    ImportanceWeights(options["proposal"], options["anneal"])  # the reverse KL's own checks
    lam = check_lam(options["lam"])
    for name in ("num_samples", "num_steps", "window", "chunk_size"):
        check_positive_int(name, options[name])
    check_in_unit_interval("step_size", options["step_size"], open_left=True, open_right=True)
    check_positive("tolerance", options["tolerance"])
    diagonal = isinstance(variational, MeanFieldVariationalDistribution)
    min_ess = 2.0 if diagonal else q.mean.shape[-1] + 1.0
    if options["num_samples"] <= min_ess:
        raise ValueError(
            f"num_samples must exceed {int(min_ess)} (M + 1 for a full-covariance q(u), 2 for a "
            f"mean-field one), got {options['num_samples']}"
        )
    check_bool("progress", options["progress"])
    return posterior, q, lam, diagonal, min_ess


def inducing_reverse_kl(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    x_e: torch.Tensor,
    y_e: torch.Tensor,
    *,
    posterior: FrozenPosterior | None = None,
    lam: float = 0.0,
    proposal: str = "posterior",
    anneal: float | None = None,
    num_samples: int = 1000,
    num_steps: int = 500,
    step_size: float = 0.5,
    window: int = 20,
    tolerance: float = 0.1,
    chunk_size: int = 4096,
    control_variate: bool = True,
    progress: bool = True,
) -> NaturalGradientResult:
    r"""Unlearn a GPyTorch sparse GP's q(u) by the reverse KL, by damped moment matching:

    .. math:: \min_{q_v} \mathrm{KL}(\tilde p \,\|\, q_v), \qquad
              \tilde p(u) \propto q(u|D) \,/\, p_\mathrm{adj}(D_e|u; λ)^β,

    p̃(D_e|u) the SVGP bound's likelihood (:class:`ErasedInducingLikelihood`: for a Gaussian
    likelihood a quadratic in u whose statistics are summed over D_e once). The steps are
    :func:`~pyro_unlearn.infer.gaussian_reverse_kl`'s (the same options and stopping rules), in
    the strategy's space of u (whitened or not): S draws from the proposal, self-normalised
    weights, q_v moved a fraction ρ of the way to their weighted moments in the expectation
    parameters (a natural-gradient step), β raised by the conditional ESS with ``anneal``,
    the iterates at β = 1 averaged. The answer is written into q(u) in the GP's own
    parameterisation (Cholesky, mean-field, natural, tril-natural) once the run is over.

    Arguments:
        gp: the trained single-output ``ApproximateGP``; its q(u) receives the answer.
        likelihood: its likelihood (held fixed).
        x_e, y_e: the erased inputs ``(N, D)`` or ``(N,)`` and targets ``(N,)``.
        posterior: q(u|D) (:func:`~pyro_unlearn.contrib.gpytorch.freeze_inducing`; default:
            the GP's current q(u)); the run starts from it.
        lam: λ ∈ [0, 1] of the adjusted likelihood.
        proposal, anneal, num_samples, num_steps, step_size, window, tolerance, progress: as
            :func:`~pyro_unlearn.infer.gaussian_reverse_kl` takes them.
        chunk_size: erased points per chunk of the kernel algebra.
        control_variate: proposing from q_v (full covariance), subtract the draws' own error
            from the weighted moments (:func:`follow`): the same target, far less noise, so
            larger steps ρ keep the weights even; ``False``: the plain weighted moments of
            :func:`~pyro_unlearn.infer.gaussian_reverse_kl`.

    Returns:
        A :class:`~pyro_unlearn.infer.natural.NaturalGradientResult` (``guide`` the GP,
        ``likelihood`` ``"quadratic"`` or ``"rows"``); ``converged`` only when the stopping rule
        fired at β = 1 without a collapse of the weights (else a LowESSWarning for a collapse).
        Not diagnosed: :func:`~pyro_unlearn.contrib.gpytorch.diagnose_inducing` judges it.

    Raises:
        TypeError, ValueError: bad options, data or posterior, a batch GP, or a non-finite
            log p̃(D_e|u), before q(u) changes.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

        M. E. Khan, H. Rue. The Bayesian Learning Rule. JMLR 24(281), 2023.

    Example::

        posterior = pug.freeze_inducing(gp)  # q(u|D)
        result = pug.inducing_reverse_kl(gp, likelihood, x_e, y_e, posterior=posterior,
                                         proposal="current", anneal=0.5, num_samples=500)
        result.converged, result.temperature[-1]  # (True, 1.0)
    """
    start = time.perf_counter()
    options = dict(locals())
    posterior, q, lam, diagonal, min_ess = _check(gp, likelihood, posterior, x_e, y_e, options)
    loglik = ErasedInducingLikelihood(gp, likelihood, x_e, y_e, chunk_size)
    loc, cov = q.mean, q.covariance_matrix
    target = (loc, cov.diagonal() if diagonal else cov)
    run = {
        "proposal": proposal,
        "anneal": anneal,
        "num_samples": num_samples,
        "num_steps": num_steps,
        "step_size": float(step_size),
        "tolerance": float(tolerance),
        "min_ess": min_ess,
        "threshold": None,
    }
    if lam != 0.0:
        run["threshold"] = log_threshold(lam, q.log_prob(loc))
    if proposal == "current" and not diagonal and control_variate:
        final, state = follow(target, loglik, run, window, progress)
        last = sorted(state.ess[-window:])
        collapsed = last[len(last) // 2] < min_ess
        settled, reached = state.settled, state.temperature[-1] == 1.0
    else:
        final, state, settled, collapsed = moment_match(target, loglik, run, window, progress)
        reached = float(state.beta) == 1.0
    if collapsed:
        warnings.warn(
            f"inducing_reverse_kl: the importance weights collapsed (median ESS of the last "
            f"{window} steps below {min_ess:g} of {num_samples} draws); use proposal='current' "
            "with anneal=0.5",
            LowESSWarning,
            stacklevel=2,
        )
    covariance = torch.diag_embed(final[1]) if diagonal else 0.5 * (final[1] + final[1].mT)
    set_inducing_distribution(gp, final[0], covariance)  # checks everything, then writes
    result = NaturalGradientResult(
        guide=gp,
        posterior=freeze_inducing(gp, posterior.guide.name_prefix),
        original=posterior,
        loc=final[0],
        covariance=covariance,
        ess=state.ess,
        temperature=state.temperature,
        num_steps=len(state.ess),
        collapsed=collapsed,
        likelihood=loglik.kind,
        converged=settled and not collapsed and reached,
        seconds=time.perf_counter() - start,
    )
    result.explanation = "not diagnosed: pug.diagnose_inducing(gp, likelihood, ...) judges it"
    return result
