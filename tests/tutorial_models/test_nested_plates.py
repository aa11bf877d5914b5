"""Cells of nested plates, as Pyro's baseball example writes the model (per-player ability,
players × at-bats Bernoulli): single at-bats are erased with a boolean mask shaped like the
observed site, by ``plate=("players", "at_bats")`` or by ``erased={"obs": mask}``."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.guides import read_gaussian, write_gaussian

PLAYERS, AT_BATS = 6, 45


def model(hits):
    with pyro.plate("players", PLAYERS, dim=-2):
        phi = pyro.sample("phi", dist.Beta(1.0, 1.0))  # each player's chance of a hit
        with pyro.plate("at_bats", AT_BATS, dim=-1):
            pyro.sample("obs", dist.Bernoulli(phi), obs=hits)


def data():
    ability = torch.linspace(0.2, 0.45, PLAYERS).unsqueeze(-1)
    hits = (torch.rand(PLAYERS, AT_BATS) < ability).float()
    erased = torch.zeros(PLAYERS, AT_BATS, dtype=torch.bool)
    erased[0, hits[0].nonzero()[:3, 0]] = True  # three of player 0's hits
    erased[3, (1 - hits[3]).nonzero()[:6, 0]] = True  # six of player 3's outs
    return hits, erased


def beta_posterior(hits, keep):
    """The exact p(phi|D) per player: Beta(1 + hits, 1 + outs) over the kept cells."""
    return dist.Beta(1.0 + (hits * keep).sum(-1), 1.0 + ((1 - hits) * keep).sum(-1))


def logit_moments(posterior):
    """Mean and variance of logit(phi) under a Beta: ψ(a) − ψ(b), ψ'(a) + ψ'(b)."""
    a, b = posterior.concentration1, posterior.concentration0
    return torch.digamma(a) - torch.digamma(b), torch.polygamma(1, a) + torch.polygamma(1, b)


def kl_to_exact(loc, scale, posterior, draws=20000):
    """KL(N(loc, scale²) ‖ p) per player in logit space, p the Beta pushed through logit."""
    z = loc + scale * torch.randn(draws, len(loc), generator=torch.Generator().manual_seed(1))
    phi = torch.sigmoid(z)
    log_p = posterior.log_prob(phi) + torch.log(phi) + torch.log1p(-phi)
    return (dist.Normal(loc, scale).log_prob(z) - log_p).mean(0)


@pytest.mark.parametrize("how", ["plates", "site"])
def test_erasing_single_at_bats(how):
    hits, erased = data()
    guide = AutoNormal(model)
    guide(hits)
    full = beta_posterior(hits, torch.ones_like(hits))
    loc, var = logit_moments(full)
    write_gaussian(guide, loc, scale=var.sqrt())  # q(phi|D): the exact posterior's moments
    if how == "plates":
        options = dict(erased=erased, plate=("players", "at_bats"))
    else:
        options = dict(erased={"obs": erased})
    result = pu.forget(model, guide, hits, progress=False, **options)
    remaining = beta_posterior(hits, (~erased).float())
    before = kl_to_exact(loc, var.sqrt(), remaining)
    after = kl_to_exact(*read_gaussian(result.posterior, diagonal=True), remaining)
    changed = torch.tensor([0, 3])
    assert (before[changed] > 0.15).all()  # q(phi|D) is off p(phi|D_r) where cells went
    assert (after[changed] < before[changed] / 4).all()
    assert after.sum() < before.sum() / 4
