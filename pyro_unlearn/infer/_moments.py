"""Damped moment matching of a Gaussian (μ, Σ) or, mean-field, (μ, σ²): the steps, running
averages and stopping rules behind :func:`~pyro_unlearn.infer.gaussian_reverse_kl`."""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .adjusted_likelihood import adjusted_log_likelihood
from .reverse_kl import effective_sample_size, next_temperature

__all__ = [
    "NEGLIGIBLE",
    "MomentState",
    "accumulate",
    "average",
    "collapsed",
    "draw",
    "heavy_tail",
    "iterate",
    "kl",
    "log_density",
    "mix",
    "settled",
    "split_error",
    "unreliable",
    "step",
    "unsettled",
    "weighted_moments",
]

NEGLIGIBLE = 0.1  # nats: a move from q(θ|D) this small needs no finer relative precision


def draw(loc: torch.Tensor, spread: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` draws (num, P) of N(loc, spread), ``spread`` a covariance (P, P) or, mean-field,
    the variances (P,)."""
    noise = torch.randn((num, loc.numel()), dtype=loc.dtype, device=loc.device)
    if spread.dim() == 1:
        return loc + noise * spread.sqrt()
    return loc + noise @ torch.linalg.cholesky(spread).mT


def log_density(theta: torch.Tensor, loc: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """log N(θ_s; loc, spread) (S,) of draws θ (S, P), ``spread`` as :func:`draw` takes it."""
    if spread.dim() == 1:
        return torch.distributions.Normal(loc, spread.sqrt()).log_prob(theta).sum(-1)
    return torch.distributions.MultivariateNormal(loc, spread).log_prob(theta)


def weighted_moments(
    theta: torch.Tensor, weights: torch.Tensor, diagonal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """m̂ = Σ w θ and Ĉ = Σ w (θ − m̂)(θ − m̂)ᵀ (its diagonal for a mean-field guide), Σ w = 1."""
    mean = weights @ theta
    centred = theta - mean
    if diagonal:
        return mean, weights @ centred**2
    return mean, (centred * weights[:, None]).mT @ centred


def mix(
    loc: torch.Tensor, spread: torch.Tensor, new_loc: torch.Tensor, new_spread: torch.Tensor, rho
) -> tuple[torch.Tensor, torch.Tensor]:
    """A convex step ρ in the expectation parameters (E θ, E θθᵀ): positive definite whenever
    Σ is and Σ̂ is positive semi-definite, ρ < 1."""
    gap = loc - new_loc
    outer = gap**2 if spread.dim() == 1 else gap[:, None] * gap[None, :]
    moved = (1 - rho) * spread + rho * new_spread + rho * (1 - rho) * outer
    return (1 - rho) * loc + rho * new_loc, moved


def average(iterates: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """The moments of the equal mixture of the iterates: averaging in expectation parameters."""
    locs = torch.stack([m for m, _ in iterates])
    loc = locs.mean(0)
    gaps = locs - loc
    spread = torch.stack([c for _, c in iterates]).mean(0)
    if spread.dim() == 1:
        return loc, spread + (gaps**2).mean(0)
    return loc, spread + gaps.mT @ gaps / len(iterates)


def kl(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    """KL(N(a) ‖ N(b)) in closed form."""
    if a[1].dim() == 1:
        p, q = (torch.distributions.Normal(m, v.sqrt()) for m, v in (a, b))
    else:
        p, q = (torch.distributions.MultivariateNormal(m, c) for m, c in (a, b))
    return float(torch.distributions.kl_divergence(p, q).sum())


@dataclass
class MomentState:
    """What the iteration carries: q_v's moments, β, the records, the iterates at β = 1 (damped
    steps) or the running averages of odd and even steps (``proposal="posterior"``)."""

    loc: torch.Tensor
    spread: torch.Tensor
    beta: torch.Tensor
    ess: list[float] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    tail: deque = field(default_factory=deque)
    halves: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    log_weights: list[torch.Tensor] = field(default_factory=list)


def step(state: MomentState, run: dict[str, Any]) -> None:
    """One iteration: draw S θ, weigh them towards p̃_β, move q_v a fraction ρ_t of the way."""
    target, current = run["target"], run["proposal"] == "current"
    source = (state.loc, state.spread) if current else target
    theta = draw(*source, run["num_samples"])
    log_lik = run["loglik"](theta)
    bad = int((~torch.isfinite(log_lik)).sum())
    if bad:
        raise ValueError(
            f"log p(D_e|θ) is not finite at {bad} of {theta.shape[0]} draws: the erased data "
            "are impossible where q_v puts mass, and p̃ ∝ q(θ|D)/p(D_e|θ) is not defined there"
        )
    log_base = torch.zeros_like(log_lik)
    if current or run["threshold"] is not None:
        log_q = log_density(theta, *target)
        if run["threshold"] is not None:
            log_lik = adjusted_log_likelihood(log_lik, log_q, run["threshold"])
        if current:
            log_base = log_q - log_density(theta, *source)
    if run["anneal"] is not None:
        state.beta = next_temperature(log_base, log_lik, state.beta, run["anneal"])
    log_weights = log_base - state.beta * log_lik
    weights = torch.softmax(log_weights, 0)
    ess = float(effective_sample_size(weights))
    state.ess.append(ess)
    state.temperature.append(float(state.beta))
    moments = weighted_moments(theta, weights, state.spread.dim() == 1)
    if not current:
        state.log_weights.append(log_weights)  # for the pooled k̂ (:func:`heavy_tail`)
        accumulate(state, moments)
        return
    # Fewer effective draws than a moment estimate needs: a proportionally shorter step.
    rho = run["step_size"] * min(1.0, ess / run["min_ess"])
    state.loc, state.spread = mix(state.loc, state.spread, *moments, rho)
    if float(state.beta) < 1.0:
        state.tail.clear()  # only iterates at the target itself are averaged
    else:
        state.tail.append((state.loc, state.spread))


def accumulate(state: MomentState, moments: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The proposal q(θ|D) does not depend on q_v, so every step's weighted moments estimate the
    same thing: q_v is their running average in expectation parameters (a natural-gradient step
    of size ρ_t = 1/t, the fixed point of the SGD reverse KL with S particles), kept as the
    averages of the odd and of the even steps, whose gap measures its Monte-Carlo error."""
    t = len(state.ess)
    half = (t - 1) % 2
    if len(state.halves) <= half:
        state.halves.append(moments)
    else:
        count = (t + 1) // 2
        state.halves[half] = mix(*state.halves[half], *moments, 1.0 / count)
    if len(state.halves) == 1:
        state.loc, state.spread = state.halves[0]
    else:  # the odd steps' average holds ⌈t/2⌉ of the t
        state.loc, state.spread = mix(*state.halves[1], *state.halves[0], ((t + 1) // 2) / t)


def heavy_tail(state: MomentState) -> float:
    """Pareto k̂ of the pooled importance log-weights of all steps (proposing from q(θ|D);
    −∞ otherwise): above ≈ 0.7 the moments' Monte-Carlo error has no reliable estimate
    (Vehtari et al., 2024)."""
    if not state.log_weights:
        return -math.inf
    from ..trust.weights import pareto_smooth  # on use: trust imports the solvers

    pooled = torch.cat(state.log_weights).detach().to("cpu", torch.float64).numpy()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ArviZ's tail fit on extreme weights
        return pareto_smooth(pooled)[1]


def split_error(state: MomentState, target: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """The Monte-Carlo error of the running average, as ¼ of the symmetrised KL between the
    averages of the odd and the even steps (each has twice the full average's variance), and
    the KL from q(θ|D) to the running average (how far it moved)."""
    odd, even = state.halves
    error = 0.125 * (kl(odd, even) + kl(even, odd))
    return error, kl((state.loc, state.spread), target)


def settled(state: MomentState, run: dict[str, Any], window: int, num_moments: int) -> bool:
    """Whether to stop. Proposing from q(θ|D): every ``window`` steps (even ones) from 2W on,
    once the running average's Monte-Carlo error (:func:`split_error`) is at most
    ``tolerance`` times the KL it moved from q(θ|D) (at least 0.1 nats). Proposing from q_v:
    the last two windows' averaged iterates agree within 3× the KL their Monte-Carlo error
    alone would put between them (≈ k/(ESS·W) for k moment parameters), without collapse."""
    t = len(state.ess)
    if t < 2 * window:
        return False
    if run["proposal"] == "posterior":
        if t % window or t % 2:
            return False
        error, moved = split_error(state, run["target"])
        return error <= run["tolerance"] * max(moved, NEGLIGIBLE)
    if len(state.tail) < 2 * window or collapsed(state.ess, window, run["min_ess"]):
        return False
    tail = list(state.tail)
    older, newer = average(tail[:window]), average(tail[window:])
    ess = sum(state.ess[-2 * window :]) / (2 * window)
    return kl(newer, older) < 3.0 * num_moments / (ess * window)


def collapsed(ess: list[float], window: int, min_ess: float) -> bool:
    """The median ESS of the last ``window`` steps is below ``min_ess``."""
    last = sorted(ess[-window:])
    return bool(last) and last[len(last) // 2] < min_ess


def iterate(state: MomentState, run: dict[str, Any], num_steps: int, window: int, progress: bool):
    """Step until the moments settle (:func:`settled`) or ``num_steps``; whether they did."""
    P = state.loc.numel()
    num_moments = 2 * P if state.spread.dim() == 1 else P + P * (P + 1) // 2
    with torch.no_grad(), tqdm(total=num_steps, desc="rKL (moments)", disable=not progress) as bar:
        for _ in range(num_steps):
            step(state, run)
            bar.update()
            bar.set_postfix(ess=f"{state.ess[-1]:.0f}", beta=f"{state.temperature[-1]:.3g}")
            if settled(state, run, window, num_moments):
                return True
    return False


def unreliable(state: MomentState) -> str | None:
    """Why the pooled weights of ``proposal="posterior"`` cannot be trusted (k̂ above Vehtari et
    al.'s threshold for their number), or ``None``."""
    from ..trust.verdicts import pareto_k_threshold  # on use: trust imports the solvers

    k = heavy_tail(state)
    n = sum(w.numel() for w in state.log_weights)
    if n < 2 or k <= pareto_k_threshold(n):
        return None
    return (
        f"the importance weights q(θ|D) → p̃ are heavy-tailed (Pareto k̂ = {k:.2f} over the {n} "
        "draws of all steps): the moments are carried by a few draws and vary from run to run; "
        "use proposal='current' with anneal=0.5"
    )


def unsettled(state: MomentState, collapsed: bool, num_steps: int) -> str:
    """Why the run is not converged, quoting its evidence."""
    if collapsed:
        return f"the weights collapsed (last ESS {state.ess[-1]:.1f})"
    if float(state.beta) < 1.0:
        return f"β = {float(state.beta):.3g} < 1 after {num_steps} steps"
    return f"the moments still moved after {num_steps} steps"
