"""Batched HMC: Metropolis-corrected leapfrog moves of a population of particles at once."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

__all__ = ["hmc_moves", "whitening"]


def whitening(
    u: torch.Tensor, weights: torch.Tensor, ess: float, mass: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, L) with L Lᵀ the weighted covariance of the unconstrained draws u (S, P) (an estimate
    of the reweighted target's), shrunk towards the unweighted one by α = P/(P + ESS):

    .. math:: Σ = (1 − α) \\sum_s w_s (u_s − m)(u_s − m)^⊤ + α \\widehat{\\mathrm{Cov}}(u)

    Arguments:
        u: (S, P) draws; rows with an infinite entry are left out.
        weights: (S,) normalised importance weights.
        ess: their effective sample size.
        mass: "dense" (L the Cholesky factor) or "diagonal" (L the (P,) standard deviations).

    Returns:
        the weighted mean (P,) and L, (P, P) or (P,).

    Example:
        >>> u = torch.tensor([[0.0], [2.0]])
        >>> whitening(u, torch.tensor([0.5, 0.5]), 2.0, "diagonal")
        (tensor([1.]), tensor([1.0000]))
    """
    finite = torch.isfinite(u).all(-1)
    u, weights = u[finite], weights[finite] / weights[finite].sum()
    P = u.shape[-1]
    mean_w = (weights[:, None] * u).sum(0)
    centred, centred0 = u - mean_w, u - u.mean(0)
    if mass == "diagonal":
        cov_w, cov_0 = (weights[:, None] * centred**2).sum(0), (centred0**2).mean(0)
    else:
        cov_w, cov_0 = (weights[:, None] * centred).T @ centred, centred0.T @ centred0 / len(u)
    alpha = P / (P + ess)
    cov = (1 - alpha) * cov_w + alpha * cov_0
    diag = cov if mass == "diagonal" else cov.diagonal()
    jitter = 1e-6 * (float(diag.mean()) if float(diag.mean()) > 0 else 1.0)
    if mass == "diagonal":
        return mean_w, (cov + jitter).sqrt()
    eye = torch.eye(P, dtype=u.dtype, device=u.device)
    return mean_w, torch.linalg.cholesky(0.5 * (cov + cov.T) + jitter * eye)


def hmc_moves(
    log_target: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    u: torch.Tensor,
    mean: torch.Tensor,
    chol: torch.Tensor,
    *,
    num_moves: int = 5,
    step_size: float | None = None,
    trajectory_length: float = math.pi / 2,
    max_leapfrog: int = 64,
    target_accept: float = 0.8,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """``num_moves`` HMC moves of every particle at once, each a Metropolis-corrected leapfrog
    trajectory that leaves the target invariant (Neal, 2011).

    The moves run in whitened coordinates z = L⁻¹(u − m) (unit mass), each particle with its own
    momentum, step jittered per particle (±20 %) and Metropolis test; between moves the step is
    multiplied by exp(2 (ā − ``target_accept``)), ā the population's mean acceptance rate.

    Arguments:
        log_target: u (n, P) → (log density (n,), its gradient (n, P)).
        u: (n, P) particles.
        mean, chol: the whitening of :func:`whitening`.
        num_moves: moves per particle.
        step_size: initial leapfrog step (default 0.8 P^(-1/4)).
        trajectory_length: leapfrog steps × step (capped at ``max_leapfrog`` steps).
        target_accept: acceptance rate the step is adapted to.
        generator: momenta, jitter and the Metropolis uniforms.
        progress: a progress bar over the moves.

    Returns:
        the moved particles (n, P), the mean acceptance probability over moves and particles,
        and the adapted step size.

    References:
        R. M. Neal. MCMC Using Hamiltonian Dynamics. Handbook of Markov Chain Monte Carlo, 2011.

    Example:
        >>> def log_target(u):  # a standard normal
        ...     return -0.5 * (u**2).sum(-1), -u
        >>> g = torch.Generator().manual_seed(0)
        >>> u = torch.zeros(4000, 1)
        >>> moved, rate, _ = hmc_moves(log_target, u, torch.zeros(1), torch.ones(1),
        ...                            num_moves=3, generator=g)
        >>> round(float(moved.std()), 1), rate > 0.8
        (1.0, True)
    """
    diagonal = chol.dim() == 1
    n, P = u.shape
    kw = {"dtype": u.dtype, "device": u.device, "generator": generator}

    def to_u(z):
        return mean + (z * chol if diagonal else z @ chol.T)

    def value_and_grad_z(z):
        lp, g = log_target(to_u(z))
        return lp, (g * chol if diagonal else g @ chol)

    if diagonal:
        z = (u - mean) / chol
    else:
        z = torch.linalg.solve_triangular(chol, (u - mean).T, upper=False).T
    lp, grad = value_and_grad_z(z)
    step = step_size if step_size is not None else 0.8 * P**-0.25
    rates = []
    for _ in tqdm(range(num_moves), desc="rejuvenating", disable=not progress, leave=False):
        eps = step * (0.8 + 0.4 * torch.rand(n, 1, **kw))
        leapfrogs = min(max_leapfrog, max(1, math.ceil(trajectory_length / step)))
        r = torch.randn(n, P, **kw)
        energy = -lp + 0.5 * (r**2).sum(-1)
        z_new, lp_new, grad_new = z, lp, grad
        r_new = r + 0.5 * eps * grad_new
        for i in range(leapfrogs):
            z_new = z_new + eps * r_new
            lp_new, grad_new = value_and_grad_z(z_new)
            r_new = r_new + (eps if i < leapfrogs - 1 else 0.5 * eps) * grad_new
        log_accept = energy - (-lp_new + 0.5 * (r_new**2).sum(-1))
        log_accept = torch.nan_to_num(log_accept, nan=-math.inf).clamp(max=0.0)
        accept = torch.rand(n, **kw).log() < log_accept
        z = torch.where(accept[:, None], z_new, z)
        lp = torch.where(accept, lp_new, lp)
        grad = torch.where(accept[:, None], grad_new, grad)
        rates.append(float(log_accept.exp().mean()))
        step *= math.exp(2.0 * (rates[-1] - target_accept))
    return to_u(z), sum(rates) / max(1, len(rates)), step
