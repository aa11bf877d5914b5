"""The EUBO for Gaussian guides, solved by natural-gradient steps (the Bayesian learning rule)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from tqdm import tqdm

from ..exact import NotNormalizableError
from ..guides import read_gaussian, write_gaussian
from ..params import ParamSnapshot
from ..posterior import FrozenPosterior, freeze
from ..validation import check_bool, check_in_unit_interval, check_positive_int
from ._gaussian_setup import FlatErased, prepare
from .adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from .natural import NaturalGradientResult

__all__ = ["NaturalEUBOResult", "gaussian_eubo"]

_MAX_HALVINGS = 30  # ρ·2⁻³⁰: below it a step keeping Λ positive definite moves nothing


@dataclass(kw_only=True)
class NaturalEUBOResult(NaturalGradientResult):
    """What :func:`gaussian_eubo` returns: a :class:`~pyro_unlearn.infer.NaturalGradientResult`
    (``ess`` and ``temperature`` stay empty: no importance weights, no annealing) with the
    EUBO's own records.

    Attributes:
        losses: the EUBO U(q_t) = E_{q_t}[log p_adj(D_e|θ)] + KL(q_t ‖ q(θ|D)) at each step,
            its first term estimated from the step's draws, its second in closed form.
        step_sizes: ρ_t taken at each step: ``step_size``, or less where the full step would
            have left the precision not positive definite (halved until it is).
        shrunk: the steps whose ρ was shrunk.
        precision_margin: the smallest eigenvalue of Λ_D^{-1/2} (Λ_D + E[∇² log p_adj(D_e|θ)])
            Λ_D^{-1/2} under q(θ|D) at the first step: 1 when the erased data carry no
            curvature, ≤ 0 when the division is not normalisable (L-BUN's test, in expectation).
    """

    losses: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    shrunk: int = 0
    precision_margin: float = math.nan


# -- Gaussians held as natural parameters: (m, Λ) or, mean-field, (m, diag Λ) --------------------
def _cholesky(precision: torch.Tensor) -> torch.Tensor | None:
    """chol Λ, or ``None`` when Λ is not positive definite (for a diagonal: √Λ)."""
    if precision.dim() == 1:
        return precision.sqrt() if bool((precision > 0).all()) else None
    factor, info = torch.linalg.cholesky_ex(precision)
    return factor if int(info) == 0 else None


def _margin(precision: torch.Tensor, base: torch.Tensor) -> float:
    """The smallest eigenvalue of B^{-1/2} A B^{-1/2} (A = precision, B = base, B ≻ 0)."""
    if precision.dim() == 1:
        return float((precision / base).min())
    factor = torch.linalg.cholesky(base)
    whitened = torch.linalg.solve_triangular(factor, precision, upper=False)
    whitened = torch.linalg.solve_triangular(factor, whitened.mT, upper=False)
    return float(torch.linalg.eigvalsh(0.5 * (whitened + whitened.mT))[0])


def _kl(loc, precision, base_loc, base_precision) -> torch.Tensor:
    """KL(N(m, Λ⁻¹) ‖ N(m_D, Λ_D⁻¹)) in closed form."""
    if precision.dim() == 1:
        p = torch.distributions.Normal(loc, precision.rsqrt())
        q = torch.distributions.Normal(base_loc, base_precision.rsqrt())
        return torch.distributions.kl_divergence(p, q).sum()
    p = torch.distributions.MultivariateNormal(loc, precision_matrix=precision)
    q = torch.distributions.MultivariateNormal(base_loc, precision_matrix=base_precision)
    return torch.distributions.kl_divergence(p, q)


def _expected_derivatives(run: dict[str, Any], loc, factor) -> tuple[torch.Tensor, ...]:
    r"""E_q[ℓ], E_q[∇ℓ] and E_q[∇²ℓ] for ℓ = log p_adj(D_e|θ), from S/2 antithetic pairs
    θ = m ± d, d = chol(Λ)^{-T} ε: the mean gradient, and the Hessian as the least-squares
    slope of the gradients on d (Bonnet's and Price's theorems; exact for a quadratic ℓ)."""
    pairs, P = run["num_samples"] // 2, loc.numel()
    eps = torch.randn((pairs, P), dtype=loc.dtype, device=loc.device)
    if factor.dim() == 1:
        step = eps / factor
    else:  # rows d_s = L^{-T} ε_s: Cov d = (L Lᵀ)⁻¹ = Λ⁻¹
        step = torch.linalg.solve_triangular(factor.mT, eps.mT, upper=True).mT
    theta = torch.cat([loc + step, loc - step]).requires_grad_(True)
    with torch.enable_grad():
        log_lik = run["loglik"](theta)
        if run["threshold"] is not None:  # the indicator is held fixed, as Trace_EUBO holds it
            log_q = run["log_q"](theta.detach())
            log_lik = adjusted_log_likelihood(log_lik, log_q, run["threshold"])
        (grad,) = torch.autograd.grad(log_lik.sum(), theta)
    bad = int((~(torch.isfinite(log_lik) & torch.isfinite(grad).all(-1))).sum())  # once a draw
    if bad:
        raise ValueError(
            f"log p(D_e|θ) or its gradient is not finite at {bad} of {2 * pairs} draws: the "
            "erased data are impossible where q_u puts mass, and p̃ ∝ q(θ|D)/p(D_e|θ) is not "
            "defined there"
        )
    diff = grad[:pairs] - grad[pairs:]  # = 2 H d_s for a quadratic ℓ
    if factor.dim() == 1:
        hessian = (diff * step).sum(0) / (2 * (step**2).sum(0))
    else:  # H L^{-T} = ½ ΔGᵀ E (EᵀE)⁻¹, then H = (H L^{-T}) Lᵀ
        gram = torch.linalg.cholesky(eps.mT @ eps)
        slope = torch.cholesky_solve(eps.mT @ diff, gram).mT / 2
        hessian = slope @ factor.mT
        hessian = 0.5 * (hessian + hessian.mT)
    return log_lik.detach().mean(), grad.mean(0), hessian


@dataclass
class _State:
    """What the iteration carries: q_u's (m, Λ), the records, the iterates of the tail."""

    loc: torch.Tensor
    precision: torch.Tensor
    losses: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    indefinite: deque = field(default_factory=deque)
    margin: float = math.nan
    tail: deque = field(default_factory=deque)


def _step(state: _State, run: dict[str, Any]) -> None:
    r"""One step of the Bayesian learning rule on f = −log p̃ = −log q(θ|D) + ℓ:
    Λ ← (1−ρ)Λ + ρ(Λ_D + E[∇²ℓ]), m ← m − ρΛ⁻¹(Λ_D(m − m_D) + E[∇ℓ])."""
    base_loc, base_precision = run["target"]
    factor = _cholesky(state.precision)
    mean_lik, grad, hessian = _expected_derivatives(run, state.loc, factor)
    diagonal = state.precision.dim() == 1
    curvature = base_precision + hessian  # E_q[∇² f]: the erased data's curvature subtracted
    state.losses.append(float(mean_lik + _kl(state.loc, state.precision, *run["target"])))
    if not state.step_sizes:
        state.margin = _margin(curvature, base_precision)
        if state.margin <= 0.0:
            raise NotNormalizableError(
                f"gaussian_eubo: Λ_D + E[∇² log p_adj(D_e|θ)] under q(θ|D) is not positive "
                f"definite (smallest eigenvalue relative to Λ_D: {state.margin:.3g} ≤ 0): the "
                "erased data carry more curvature than q(θ|D) holds, so q(θ|D)/p_adj(D_e|θ) has "
                "no Gaussian answer (L-BUN's test); raise lam, or check that D_e was in D"
            )
    state.indefinite.append(_cholesky(curvature) is None)
    if len(state.indefinite) == state.indefinite.maxlen and all(state.indefinite):
        raise NotNormalizableError(
            f"gaussian_eubo: Λ_D + E[∇² log p_adj(D_e|θ)] was not positive definite at any of "
            f"the last {len(state.indefinite)} steps: q(θ|D)/p_adj(D_e|θ) has no Gaussian "
            "answer where q_u went; raise lam"
        )
    gradient = base_precision * (state.loc - base_loc) if diagonal else (
        base_precision @ (state.loc - base_loc)
    )  # fmt: skip
    gradient = gradient + grad
    rho = run["step_size"]
    for _ in range(_MAX_HALVINGS):
        precision = (1 - rho) * state.precision + rho * curvature
        new_factor = _cholesky(precision)
        if new_factor is not None:
            break
        rho /= 2
    else:
        raise NotNormalizableError(
            "gaussian_eubo: no step kept q_u's precision positive definite"
        )  # pragma: no cover - Λ ≻ 0 makes a small enough ρ always succeed
    if diagonal:
        state.loc = state.loc - rho * gradient / precision
    else:
        state.loc = state.loc - rho * torch.cholesky_solve(gradient[:, None], new_factor)[:, 0]
    state.precision = precision if diagonal else 0.5 * (precision + precision.mT)
    state.step_sizes.append(rho)
    state.tail.append((state.loc, state.precision))


def _average(iterates: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """The average in natural parameters (Λm, Λ), where the learning rule's steps are linear."""
    precision = torch.stack([p for _, p in iterates]).mean(0)
    if precision.dim() == 1:
        shift = torch.stack([p * m for m, p in iterates]).mean(0)
        return shift / precision, precision
    shift = torch.stack([p @ m for m, p in iterates]).mean(0)
    return torch.linalg.solve(precision, shift), precision


def _settled(state: _State, window: int, pairs: int, num_moments: int) -> bool:
    """The last two windows' averages agree within 3× the KL their Monte-Carlo error alone
    would put between them (≈ k/(n·W) for k natural parameters, n antithetic pairs)."""
    if len(state.tail) < 2 * window:
        return False
    tail = list(state.tail)
    older, newer = _average(tail[:window]), _average(tail[window:])
    return float(_kl(*newer, *older)) < 3.0 * num_moments / (pairs * window)


def _check_options(lam, num_samples, num_steps, step_size, window, progress) -> tuple:
    lam = check_lam(lam)
    num_samples = check_positive_int("num_samples", num_samples)
    if num_samples % 2:
        raise ValueError(
            f"num_samples must be even (antithetic pairs θ = m ± d), got {num_samples}"
        )
    num_steps = check_positive_int("num_steps", num_steps)
    window = check_positive_int("window", window)
    step_size = check_in_unit_interval("step_size", step_size, open_left=True)
    check_bool("progress", progress)
    return lam, num_samples, num_steps, step_size, window


def gaussian_eubo(
    model: Callable[..., Any],
    guide: Any,
    *args: Any,
    erased: Any = None,
    plate: str | tuple[str, ...] | Mapping[str, Any] | None = None,
    posterior: FrozenPosterior | None = None,
    lam: float = 0.0,
    num_samples: int = 256,
    num_steps: int = 500,
    step_size: float = 0.5,
    window: int = 10,
    progress: bool = True,
    diagnose: bool = True,
    diagnose_samples: int = 1000,
    jit: bool = True,
    **kwargs: Any,
) -> NaturalEUBOResult:
    r"""Unlearn by minimising the EUBO over a Gaussian guide's own family, by natural-gradient
    steps (the Bayesian learning rule) instead of stochastic gradient steps:

    .. math:: \min_{q_u} U(q_u) = \mathbb{E}_{q_u}[\log p_\mathrm{adj}(D_e|θ; λ)]
              + \mathrm{KL}(q_u \,\|\, q(θ|D)) = \mathrm{KL}(q_u \,\|\, \tilde p_\mathrm{adj})
              + \text{const}, \qquad \tilde p_\mathrm{adj} ∝ q(θ|D) / p_\mathrm{adj}(D_e|θ; λ).

    With q(θ|D) = N(m_D, Λ_D⁻¹), ℓ = log p_adj(D_e|θ; λ) and q_u = N(m, Λ⁻¹), each step is

    .. math:: Λ ← (1−ρ)Λ + ρ\big(Λ_D + \mathbb{E}_{q_u}[∇²ℓ]\big), \qquad
              m ← m − ρ Λ^{-1}\big(Λ_D(m − m_D) + \mathbb{E}_{q_u}[∇ℓ]\big):

    q(θ|D)'s part is exact; the erased data's curvature is *subtracted* from Λ_D. E[∇ℓ] and
    E[∇²ℓ] come from S/2 antithetic pairs θ = m ± d of reparameterised draws: the mean
    gradient, and the least-squares slope of the gradients on d (Bonnet's and Price's
    theorems), both exact for a quadratic ℓ, so a Gaussian likelihood lands on q(θ|D)/p(D_e|θ)
    in one step at ρ = 1. Mean-field guides take the diagonals. ℓ's gradient is the pathwise
    one with the adjusted likelihood's indicator held fixed, as in
    :class:`~pyro_unlearn.Trace_EUBO`: both paths share their fixed point. Λ_D + E[∇²ℓ] under
    q(θ|D) must be positive definite (L-BUN's test in expectation: ``precision_margin``); later
    steps that would leave Λ indefinite are halved (``shrunk``). The run stops once the
    averages (in natural parameters) of the last two windows of iterates agree within their
    Monte-Carlo error, and answers the last window's average. All in the guide's flat
    unconstrained space, device and dtype; log p(D_e|θ) is the model's run in a ``pyro.plate``,
    recorded once (:func:`~pyro_unlearn.infer.fused.erased_log_likelihood_fn`).

    Arguments:
        model: the Pyro model.
        guide: the trained live AutoNormal, AutoDiagonalNormal or AutoMultivariateNormal; it
            receives the answer (all or nothing: a failed run leaves it as it was).
        *args, **kwargs: the model's arguments: D_e alone (``erased=None``) or the full data
            with ``erased`` rows of ``plate``, as :func:`~pyro_unlearn.unlearn` takes them.
        erased, plate: as :func:`~pyro_unlearn.unlearn`'s.
        posterior: q(θ|D), frozen (default: ``pu.freeze(guide)``); the run starts from it.
        lam: λ ∈ [0, 1] of the adjusted likelihood.
        num_samples: S draws per step, even (S/2 antithetic pairs; more than 2P for a full
            covariance over P dimensions).
        num_steps: the most steps.
        step_size: ρ ∈ (0, 1]; 1 is exact in one step for a Gaussian likelihood.
        window: W steps per window of the stopping rule and of the average.
        progress: show a tqdm bar.
        diagnose, diagnose_samples: attach the trust check
            (:func:`pyro_unlearn.trust.attach_trust`), as :func:`~pyro_unlearn.forget` does.
        jit: evaluate log p(D_e|θ) from a recording of the model (``True``) or through Pyro's
            handlers every step (``False``).

    Returns:
        A :class:`NaturalEUBOResult`.

    Raises:
        TypeError: for a guide that is not one of the three.
        ValueError: for bad options, a model that cannot take a particle plate, or a
            non-finite log p(D_e|θ) or gradient, before the guide changes.
        NotNormalizableError: (:class:`~pyro_unlearn.exact.NotNormalizableError`, a
            ``ValueError``) when Λ_D + E[∇²ℓ] is not positive definite under q(θ|D), or at
            every step of a window: the guide and the param store are left as they were.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3.3.1: the EUBO with the adjusted likelihood).

        M. E. Khan, H. Rue. The Bayesian Learning Rule. JMLR 24(281), 2023.

        M. E. Khan, D. Nielsen, V. Tangkaratt, W. Lin, Y. Gal, A. Srivastava. Fast and Scalable
        Bayesian Deep Learning by Weight-Perturbation in Adam. ICML 2018.

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
        >>> result = gaussian_eubo(model, guide, y, erased=[0, 1], plate="data", step_size=1.0,
        ...                        num_samples=10, num_steps=1, progress=False, diagnose=False)
        >>> loc, cov = read_gaussian(result.posterior)  # q(μ|y)/p(y[:2]|μ) = N(0.55, 1/8)
        >>> round(float(loc), 4), round(float(cov), 4)
        (0.55, 0.125)
    """
    from ..trust import Caveats, attach_trust, check_diagnose_options  # trust imports us

    start = time.perf_counter()
    diagnose_samples = check_diagnose_options(diagnose, diagnose_samples)
    lam, num_samples, num_steps, step_size, window = _check_options(
        lam, num_samples, num_steps, step_size, window, progress
    )
    original, layout, fn = prepare(
        model, guide, posterior, args, kwargs, erased, plate, jit, "gaussian_eubo", "eubo"
    )
    diagonal, P = not isinstance(guide, AutoMultivariateNormal), layout.size
    least = 4 if diagonal else 2 * (P + 1)
    if num_samples < least:
        raise ValueError(
            f"num_samples must be at least {least} (2(P + 1) for a full covariance over P = {P} "
            f"dimensions, 4 for a mean-field guide), got {num_samples}"
        )
    loc, spread = read_gaussian(original, diagonal=diagonal)
    precision = spread**-2 if diagonal else torch.cholesky_inverse(torch.linalg.cholesky(spread))
    precision = precision if diagonal else 0.5 * (precision + precision.mT)
    target = (loc, precision)
    run = {
        "target": target,
        "num_samples": num_samples,
        "step_size": step_size,
        "loglik": FlatErased(layout, fn),
        "log_q": lambda theta: _log_q(theta, loc, precision),
        "threshold": None if lam == 0.0 else log_threshold(lam, original.log_q_max),
    }
    state = _State(loc, precision, tail=deque(maxlen=2 * window), indefinite=deque(maxlen=window))
    converged = _iterate(state, run, num_steps, window, progress)
    final = _average(list(state.tail)[-window:])  # the last window: past the transient
    with ParamSnapshot.transaction():  # all or nothing
        covariance = 1.0 / final[1] if diagonal else torch.cholesky_inverse(
            torch.linalg.cholesky(final[1])
        )  # fmt: skip
        if diagonal:
            write_gaussian(guide, final[0], scale=covariance.sqrt())
        else:
            write_gaussian(guide, final[0], 0.5 * (covariance + covariance.mT))
        frozen = freeze(guide, *args, **kwargs)
    result = NaturalEUBOResult(
        guide=guide,
        posterior=frozen,
        original=original,
        loc=final[0],
        covariance=torch.diag_embed(covariance) if diagonal else covariance,
        num_steps=len(state.losses),
        likelihood="fused" if fn.fused else f"traced: {fn.reason}",
        losses=state.losses,
        step_sizes=state.step_sizes,
        shrunk=sum(r < step_size for r in state.step_sizes),
        precision_margin=state.margin,
        converged=converged,
        seconds=time.perf_counter() - start,
    )
    if not diagnose:
        result.explanation = "not diagnosed: gaussian_eubo(..., diagnose=False)"
        return result
    reasons = [] if converged else [f"the moments still moved after {num_steps} steps"]
    return attach_trust(
        result, model, original, args, kwargs, erased=erased, plate=plate, lam=lam,
        num_samples=diagnose_samples, caveats=Caveats(approximate=reasons),
    )  # fmt: skip


def _log_q(theta: torch.Tensor, loc: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """log q(θ|D) of draws (S, P) under N(m_D, Λ_D⁻¹)."""
    if precision.dim() == 1:
        return torch.distributions.Normal(loc, precision.rsqrt()).log_prob(theta).sum(-1)
    return torch.distributions.MultivariateNormal(loc, precision_matrix=precision).log_prob(theta)


def _iterate(state: _State, run: dict[str, Any], num_steps: int, window: int, progress: bool):
    """Step until the iterates settle (:func:`_settled`) or ``num_steps``; whether they did."""
    P = state.loc.numel()
    num_moments = 2 * P if state.precision.dim() == 1 else P + P * (P + 1) // 2
    pairs = run["num_samples"] // 2
    with torch.no_grad(), tqdm(total=num_steps, desc="EUBO (natural)", disable=not progress) as bar:
        for _ in range(num_steps):
            _step(state, run)
            bar.update()
            bar.set_postfix(eubo=f"{state.losses[-1]:.4g}", rho=f"{state.step_sizes[-1]:.3g}")
            if _settled(state, window, pairs, num_moments):
                return True
    return False
