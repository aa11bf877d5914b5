"""Bayesian linear regression: unlearning against the closed-form target (EXPERIMENTS.md §3).

With a full-covariance Gaussian guide the λ = 0 optimum of both losses is exactly
q(θ|D)/p(D_e|θ) = N(μ̃, Λ̃⁻¹) (DESIGN.md §1), so every number here has an exact reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from tqdm import tqdm

import pyro_unlearn as pu

from ..datasets import LinearRegressionData, linear_regression
from ..metrics import gaussian_kl, guide_moments

__all__ = ["LAMBDAS", "linear_model", "run", "train"]

#: The λ grid of the papers' common protocol.
LAMBDAS = (0.5, 0.1, 1e-3, 1e-5, 1e-9, 0.0)


def linear_model(x: torch.Tensor, y: torch.Tensor | None = None, noise_scale: float = 0.5):
    """y ~ N(x·w + b, σ²) with w ~ N(0, 10²)ᴰ, b ~ N(0, 10²)."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, 10.0).expand([x.shape[-1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(zero, 10.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((w * x).sum(-1) + b, noise_scale), obs=y)


def train(
    model: Callable, x: torch.Tensor, y: torch.Tensor, num_steps: int, progress: bool = False
) -> tuple[AutoMultivariateNormal, float]:
    """Fit a full-covariance Gaussian guide by Trace_ELBO; returns (guide, seconds)."""
    guide = AutoMultivariateNormal(model)
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / num_steps)})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    start = time.perf_counter()
    for _ in tqdm(range(num_steps), desc="training q(θ|D)", disable=not progress, leave=False):
        svi.step(x, y)
    return guide, time.perf_counter() - start


@dataclass
class Row:
    method: str
    lam: float
    kl_target: float  # KL(q_u ‖ exact q(θ|D)/p(D_e|θ))
    kl_retrained: float  # KL(q_u ‖ q retrained on D_r)
    seconds: float
    ess: float | None = None


def run(
    lambdas: Sequence[float] = LAMBDAS,
    *,
    data: LinearRegressionData | None = None,
    train_steps: int = 1500,
    unlearn_steps: int = 500,
    num_particles: int = 1024,
    lr: float = 0.02,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train q(θ|D) and the retrained reference, unlearn with EUBO and rKL over ``lambdas``.

    Returns ``{"rows": [...], "train_seconds", "retrain_seconds", "settings", ...}`` with, per
    (method, λ), the KL to the closed-form target and to the retrained posterior.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = data or linear_regression(seed=seed)
    x, y, erased = data.x, data.y, data.erased
    keep = data.remaining

    def model(x, y=None):
        return linear_model(x, y, data.noise_scale)

    with pyro.get_param_store().scope():  # the reference lives in its own store
        retrained, retrain_seconds = train(model, x[keep], y[keep], train_steps, progress)
        ref_loc, ref_cov = (t.clone() for t in guide_moments(retrained))
    guide, train_seconds = train(model, x, y, train_steps, progress)
    posterior = pu.freeze(guide)
    loc, cov = (t.clone() for t in guide_moments(guide))
    features = torch.cat([x[erased], x.new_ones(len(erased), 1)], dim=-1)
    target_loc, target_prec = pu.exact.gaussian_linear_unlearn(
        loc, torch.linalg.inv(cov), features, y[erased], data.noise_scale
    )
    target_cov = torch.linalg.inv(target_prec)

    def kls(m, c):
        return float(gaussian_kl(m, c, target_loc, target_cov)), float(
            gaussian_kl(m, c, ref_loc, ref_cov)
        )

    rows = [Row("full", math.nan, *kls(loc, cov), 0.0)]
    losses = {"eubo": pu.Trace_EUBO, "rkl": pu.ReverseKL}
    jobs = [(m, lam) for lam in lambdas for m in losses]
    for method, lam in tqdm(jobs, desc="unlearning", disable=not progress):
        posterior.restore(guide)
        loss = losses[method](posterior, lam, num_particles=num_particles, vectorize_particles=True)
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / unlearn_steps)})
        svi = SVI(pu.unlearn(model), guide, optim, loss)
        start = time.perf_counter()
        for _ in range(unlearn_steps):
            svi.step(x[erased], y[erased])
        seconds = time.perf_counter() - start
        ess = float(loss.ess) if method == "rkl" else None
        rows.append(Row(method, lam, *kls(*guide_moments(guide)), seconds, ess))
    posterior.restore(guide)
    return {
        "rows": [vars(r) for r in rows],
        "train_seconds": train_seconds,
        "retrain_seconds": retrain_seconds,
        "target": {"loc": target_loc.tolist(), "cov": target_cov.tolist()},
        "retrained": {"loc": ref_loc.tolist(), "cov": ref_cov.tolist()},
        "full": {"loc": loc.tolist(), "cov": cov.tolist()},
        "settings": {
            "num_data": len(y),
            "num_erased": len(erased),
            "noise_scale": data.noise_scale,
            "train_steps": train_steps,
            "unlearn_steps": unlearn_steps,
            "num_particles": num_particles,
            "lr": lr,
            "seed": seed,
            "device": str(x.device),
            "dtype": str(x.dtype),
        },
    }
