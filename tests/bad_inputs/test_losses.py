"""Bad inputs of Trace_EUBO and ReverseKL: options refused on construction, non-finite data and
a posterior of another shape named on the first step (under validation), nothing changed."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), 1.0), obs=y)


@pytest.fixture
def setup():
    x, y = torch.randn(8, 2), torch.randn(8)
    guide = AutoNormal(regression)
    guide(x, y)
    return guide, pu.freeze(guide), x, y


LOSSES = [pu.Trace_EUBO, pu.ReverseKL]
OPTIONS = {
    "lam-negative": (dict(lam=-1.0), ValueError, "lam"),
    "lam-above-one": (dict(lam=2.0), ValueError, "lam"),
    "lam-nan": (dict(lam=math.nan), ValueError, "lam"),
    "lam-string": (dict(lam="0.5"), TypeError, "lam"),
    "lam-bool": (dict(lam=True), TypeError, "lam"),
    "num_particles-zero": (dict(num_particles=0), ValueError, "num_particles"),
    "num_particles-negative": (dict(num_particles=-1), ValueError, "num_particles"),
    "num_particles-fraction": (dict(num_particles=1.5), TypeError, "num_particles"),
    "num_particles-string": (dict(num_particles="4"), TypeError, "num_particles"),
    "vectorize-string": (dict(vectorize_particles="yes"), TypeError, "vectorize_particles"),
    "max_plate_nesting-negative": (dict(max_plate_nesting=-1), ValueError, "max_plate_nesting"),
    "max_plate_nesting-fraction": (dict(max_plate_nesting=0.5), TypeError, "max_plate_nesting"),
    "retain_graph-string": (dict(retain_graph="no"), TypeError, "retain_graph"),
}
RKL_OPTIONS = {
    "proposal-unknown": (dict(proposal="prior"), ValueError, "proposal"),
    "proposal-number": (dict(proposal=3), ValueError, "proposal"),
    "anneal-zero": (dict(proposal="current", anneal=0.0), ValueError, "anneal"),
    "anneal-one": (dict(proposal="current", anneal=1.0), ValueError, "anneal"),
    "anneal-above-one": (dict(proposal="current", anneal=1.5), ValueError, "anneal"),
    "anneal-nan": (dict(proposal="current", anneal=math.nan), ValueError, "anneal"),
    "anneal-string": (dict(proposal="current", anneal="0.5"), TypeError, "anneal"),
    "anneal-from-posterior": (dict(anneal=0.5), ValueError, "proposal='current'"),
}


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("kwargs, error, match", OPTIONS.values(), ids=OPTIONS.keys())
def test_bad_option(setup, unchanged, loss_cls, kwargs, error, match):
    guide, posterior, _, _ = setup
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        loss_cls(posterior, **kwargs)


@pytest.mark.parametrize("kwargs, error, match", RKL_OPTIONS.values(), ids=RKL_OPTIONS.keys())
def test_bad_reverse_kl_option(setup, unchanged, kwargs, error, match):
    guide, posterior, _, _ = setup
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.ReverseKL(posterior, **kwargs)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_live_guide_as_posterior(setup, unchanged, loss_cls):
    guide, posterior, _, _ = setup
    with unchanged(guide, posterior), pytest.raises(TypeError, match="FrozenPosterior"):
        loss_cls(guide)


def _wider(x, y=None):
    return regression(torch.cat([x, x[:, :1]], -1), y)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize(
    "case, match",
    [
        ("nan-y", r"args\[1\] has a non-finite value \(nan\) at row 3"),
        ("inf-x", r"args\[0\] has a non-finite value \(inf\) at row 1"),
        ("other-shape", r"site 'w_unconstrained' has shape .*2\) in the guide but .*3\)"),
    ],
    ids=["nan-y", "inf-x", "posterior-of-another-shape"],
)
def test_step_names_the_problem(setup, unchanged, loss_cls, case, match):
    """Under validation (the default) the first SVI step names the problem; the step fails
    before the optimiser moves anything."""
    guide, posterior, x, y = setup
    if case == "nan-y":
        y = y.clone()
        y[3] = math.nan
    elif case == "inf-x":
        x = x.clone()
        x[1, 0] = math.inf
    else:
        pyro.clear_param_store()
        guide = AutoNormal(regression)
        guide(x, y)
        with pu.params.ParamSnapshot().active():
            posterior = pu.freeze(AutoNormal(_wider), x, y)
    loss = loss_cls(posterior, num_particles=4, vectorize_particles=True)
    svi = SVI(pu.unlearn(regression), guide, pyro.optim.Adam({"lr": 0.1}), loss)
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):
        svi.step(x, y)
