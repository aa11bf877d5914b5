"""Bad inputs of gaussian_reverse_kl: each is named before anything runs, and the live guide,
the param store and the frozen posterior stay bit-identical."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

import pyro_unlearn as pu
from pyro_unlearn.infer import gaussian_reverse_kl


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((w * x).sum(-1), 1.0), obs=y)


def unbatched(x, y=None):  # w.unsqueeze(-2) mixes the particle dim into the data's
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), 1.0), obs=y)


@pytest.fixture
def setup():
    x, y = torch.randn(8, 2), torch.randn(8)
    guide = AutoMultivariateNormal(regression)
    guide(x, y)
    return guide, pu.freeze(guide), x, y


OPTIONS = {
    "proposal-unknown": (dict(proposal="prior"), ValueError, "proposal"),
    "anneal-without-current": (dict(anneal=0.5), ValueError, "anneal"),
    "anneal-one": (dict(proposal="current", anneal=1.0), ValueError, "anneal"),
    "lam-above-one": (dict(lam=1.5), ValueError, "lam"),
    "lam-nan": (dict(lam=math.nan), ValueError, "lam"),
    "num_samples-zero": (dict(num_samples=0), ValueError, "num_samples"),
    "num_samples-too-few": (dict(num_samples=3), ValueError, "num_samples must exceed 3"),
    "num_steps-fraction": (dict(num_steps=1.5), TypeError, "num_steps"),
    "window-zero": (dict(window=0), ValueError, "window"),
    "step_size-one": (dict(step_size=1.0), ValueError, "step_size"),
    "step_size-zero": (dict(step_size=0.0), ValueError, "step_size"),
    "step_size-string": (dict(step_size="0.5"), TypeError, "step_size"),
    "progress-string": (dict(progress="yes"), TypeError, "progress"),
    "diagnose-string": (dict(diagnose="yes"), TypeError, "diagnose"),
    "posterior-not-frozen": (dict(posterior="q"), TypeError, "FrozenPosterior"),
}


@pytest.mark.parametrize("case", OPTIONS, ids=list(OPTIONS))
def test_bad_options_are_named_and_change_nothing(case, setup, unchanged):
    options, error, match = OPTIONS[case]
    guide, posterior, x, y = setup
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        gaussian_reverse_kl(regression, guide, x, y, erased=[0], plate="data", **options)


@pytest.mark.parametrize("guide_cls", [AutoDelta, AutoLowRankMultivariateNormal])
def test_guides_without_a_writable_gaussian_are_refused(guide_cls, unchanged):
    x, y = torch.randn(8, 2), torch.randn(8)
    guide = guide_cls(regression)
    guide(x, y)
    with unchanged(guide), pytest.raises(TypeError, match="AutoNormal, AutoDiagonalNormal or"):
        gaussian_reverse_kl(regression, guide, x, y, erased=[0], plate="data")


def test_a_frozen_posterior_is_not_a_guide(setup, unchanged):
    guide, posterior, x, y = setup
    with unchanged(guide, posterior), pytest.raises(TypeError, match="live Gaussian guide"):
        gaussian_reverse_kl(regression, posterior, x, y, erased=[0], plate="data")


def test_non_finite_data_and_a_posterior_of_another_guide(setup, unchanged):
    guide, posterior, x, y = setup
    bad = y.clone()
    bad[3] = math.nan
    with unchanged(guide, posterior), pytest.raises(ValueError, match="args\\[1\\]"):
        gaussian_reverse_kl(regression, guide, x, bad, erased=[0], plate="data")
    other = AutoNormal(regression)
    other(x, y)
    with unchanged(guide, posterior), pytest.raises(ValueError, match="structure"):
        gaussian_reverse_kl(regression, other, x, y, erased=[0], plate="data", posterior=posterior)


def test_a_model_that_cannot_take_a_particle_plate(unchanged):
    x, y = torch.randn(8, 2), torch.randn(8)
    guide = AutoMultivariateNormal(unbatched)
    guide(x, y)
    with unchanged(guide), pytest.raises(ValueError, match="cannot (take|evaluate)"):
        gaussian_reverse_kl(unbatched, guide, x, y, erased=[0], plate="data")


def test_impossible_erased_data_fail_before_the_guide_changes(unchanged):
    def model(x, y=None):  # y ~ Uniform(0, w): y_e = 5 is impossible where w < 5
        w = pyro.sample("w", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Uniform(0.0, w), obs=y)

    x, y = torch.zeros(4), torch.tensor([0.5, 0.2, 0.1, 5.0])
    guide = AutoNormal(model)
    guide(x, y)
    with pyro.validation_enabled(False), unchanged(guide):
        with pytest.raises(ValueError, match="not finite"):
            gaussian_reverse_kl(model, guide, x, y, erased=[3], plate="data", progress=False)
