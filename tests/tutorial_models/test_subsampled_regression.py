"""Mini-batch training with full-D_e unlearning: a Bayesian linear regression whose data plate
subsamples, as Pyro's SVI tutorials write it. Each unlearning step sees every erased row, counted
once, so the annealed reverse KL reaches the exact p(θ|D_r)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.guides import read_gaussian, write_gaussian
from pyro_unlearn.metrics import gaussian_kl

NOISE, BATCH = 0.5, 20


def model(x, y):
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x), subsample_size=BATCH) as idx:
        pyro.sample("obs", dist.Normal(a + b * x[idx], NOISE), obs=y[idx])


def data():
    x = torch.linspace(-1.0, 1.0, 200)
    y = 1.0 + 2.0 * x + NOISE * torch.randn(200)
    erased = torch.arange(0, 200, 20)  # ten rows, shifted: an informative erasure
    y[erased] += 2.0
    return x, y, erased


def exact(x, y):
    """p(a, b | x, y) as (loc, covariance), in the guide's order (a, b)."""
    features = torch.stack([torch.ones_like(x), x], dim=-1)
    loc, precision = gaussian_linear_posterior(
        torch.zeros(2), torch.eye(2) / 100.0, features, y, NOISE
    )
    return loc, torch.linalg.inv(precision)


def test_annealed_reverse_kl_on_a_subsampled_plate():
    x, y, erased = data()
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    write_gaussian(guide, *exact(x, y))  # q(θ|D): the exact posterior of all the data
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[erased] = False
    remaining = exact(x[keep], y[keep])
    full = gaussian_kl(*remaining, *exact(x, y))
    result = pu.forget(
        model,
        guide,
        x,
        y,
        erased=erased,
        plate="data",
        method="rkl",
        loss_options={"proposal": "current", "anneal": 0.5},
        progress=False,
    )
    unlearned = gaussian_kl(*remaining, *read_gaussian(result.posterior))
    assert full > 2.0  # q(θ|D) is far from p(θ|D_r): the erased rows matter
    # every step saw all ten erased rows (a batch's share of them left KL ≈ 1.2 here)
    assert unlearned < 0.05
