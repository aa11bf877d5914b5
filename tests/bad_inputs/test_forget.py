"""Bad inputs of pu.forget: every one is named, and the live guide, the param store and the
frozen posterior stay bit-identical (the guide has moved away from q(θ|D), so a premature
restore would show)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

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
    posterior = pu.freeze(guide)
    with torch.no_grad():
        pyro.param("AutoNormal.locs.w").add_(1.0)  # the live guide moved on from q(θ|D)
    return guide, posterior, x, y


OPTIONS = {
    "method-unknown": (dict(method="retrain"), ValueError, "method"),
    "method-none": (dict(method=None), ValueError, "method"),
    "lam-negative": (dict(lam=-0.1), ValueError, "lam"),
    "mass-zero": (dict(mass=0.0), ValueError, "mass"),
    "mass-above-one": (dict(mass=1.5), ValueError, "mass"),
    "mass-string": (dict(mass="half"), TypeError, "mass"),
    "mass-and-lam": (dict(mass=0.9, lam=1e-3), ValueError, "lam or mass, not both"),
    "lam-above-one": (dict(lam=1.5), ValueError, "lam"),
    "lam-nan": (dict(lam=math.nan), ValueError, "lam"),
    "lam-string": (dict(lam="0.1"), TypeError, "lam"),
    "num_particles-zero": (dict(num_particles=0), ValueError, "num_particles"),
    "num_particles-negative": (dict(num_particles=-3), ValueError, "num_particles"),
    "num_particles-fraction": (dict(num_particles=2.5), TypeError, "num_particles"),
    "num_particles-string": (dict(num_particles="8"), TypeError, "num_particles"),
    "num_steps-zero": (dict(num_steps=0), ValueError, "num_steps"),
    "num_steps-fraction": (dict(num_steps=1.5), TypeError, "num_steps"),
    "window-zero": (dict(window=0), ValueError, "window"),
    "window-negative": (dict(window=-1), ValueError, "window"),
    "lr-nan": (dict(lr=math.nan), ValueError, "lr"),
    "lr-zero": (dict(lr=0.0), ValueError, "lr"),
    "lr-negative": (dict(lr=-1e-3), ValueError, "lr"),
    "lr-string": (dict(lr="0.01"), TypeError, "lr"),
    "optim-string": (dict(optim="adam"), TypeError, "optim"),
    "loss_options-list": (dict(loss_options=[1]), TypeError, "loss_options"),
    "loss_options-unknown": (
        dict(method="rkl", loss_options={"foo": 1}),
        ValueError,
        "unknown option.*foo",
    ),
    "loss_options-with-auto": (
        dict(loss_options={"proposal": "current"}),
        ValueError,
        "method='auto' chooses the loss itself",
    ),
    "loss_options-sets-lam": (dict(loss_options={"lam": 0.1}), ValueError, "pass them to forget"),
    "loss_options-eubo-proposal": (
        dict(method="eubo", loss_options={"proposal": "current"}),
        ValueError,
        "unknown option.*proposal",
    ),
    "anneal-without-current": (
        dict(method="rkl", loss_options={"anneal": 0.5}),
        ValueError,
        "proposal='current'",
    ),
    "proposal-unknown": (dict(loss_options={"proposal": "prior"}), ValueError, "proposal"),
    "anneal-above-one": (
        dict(loss_options={"proposal": "current", "anneal": 1.5}),
        ValueError,
        "anneal",
    ),
    "anneal-one": (dict(loss_options={"proposal": "current", "anneal": 1.0}), ValueError, "anneal"),
    "anneal-string": (
        dict(method="rkl", loss_options={"proposal": "current", "anneal": "half"}),
        TypeError,
        "anneal",
    ),
    "vectorize-string": (dict(vectorize_particles="yes"), TypeError, "vectorize_particles"),
    "max_plate_nesting-negative": (dict(max_plate_nesting=-1), ValueError, "max_plate_nesting"),
    "max_plate_nesting-fraction": (dict(max_plate_nesting=1.5), TypeError, "max_plate_nesting"),
}

ROWS = {
    "index-out-of-range": (dict(erased=[8], plate="data"), IndexError, "out of range"),
    "duplicate": (dict(erased=[0, 0], plate="data"), ValueError, "duplicate"),
    "empty": (dict(erased=[], plate="data"), ValueError, "empty"),
    "all-false-mask": (dict(erased=torch.zeros(8, dtype=torch.bool), plate="data"), ValueError,
                       "all-False"),
    "float-rows": (dict(erased=[0.5], plate="data"), TypeError, "integer"),
    "negative": (dict(erased=[-1], plate="data"), ValueError, "negative"),
    "mask-length": (dict(erased=torch.ones(5, dtype=torch.bool), plate="data"), ValueError,
                    "length 5"),
    "unknown-plate": (dict(erased=[1], plate="nope"), ValueError, "plate 'nope'"),
    "rows-without-plate": (dict(erased=[1]), ValueError, "plate"),
    "unknown-site": (dict(erased={"z": None}), ValueError, "never ran"),
    "string-rows": (dict(erased="abc", plate="data"), TypeError, "indices or a boolean mask"),
}  # fmt: skip


@pytest.mark.parametrize("kwargs, error, match", OPTIONS.values(), ids=OPTIONS.keys())
def test_bad_option(setup, unchanged, kwargs, error, match):
    guide, posterior, x, y = setup
    options = dict(erased=[0, 1], plate="data", posterior=posterior, progress=False)
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.forget(regression, guide, x, y, **{**options, **kwargs})


@pytest.mark.parametrize("kwargs, error, match", ROWS.values(), ids=ROWS.keys())
def test_bad_erased_rows(setup, unchanged, kwargs, error, match):
    guide, posterior, x, y = setup
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.forget(regression, guide, x, y, posterior=posterior, progress=False, **kwargs)


def _with(t, row, value):
    t = t.clone()
    t[row] = value
    return t


@pytest.mark.parametrize(
    "which, row, value, match",
    [
        ("y", 2, math.nan, r"args\[1\] has a non-finite value \(nan\) at row 2"),
        ("y", 7, -math.inf, r"args\[1\] has a non-finite value \(-inf\) at row 7"),
        ("x", 5, math.inf, r"args\[0\] has a non-finite value \(inf\) at row 5"),
        ("y-keyword", 4, math.nan, r"y has a non-finite value \(nan\) at row 4"),
        ("y-unerased-row", 6, math.nan, r"args\[1\] has a non-finite value \(nan\) at row 6"),
    ],
    ids=["nan-y", "minus-inf-y", "inf-x", "nan-keyword-y", "nan-in-a-kept-row"],
)
def test_non_finite_data(setup, unchanged, which, row, value, match):
    guide, posterior, x, y = setup
    if which == "x":
        args, kwargs = (_with(x, row, value), y), {}
    elif which == "y-keyword":
        args, kwargs = (x,), {"y": _with(y, row, value)}
    else:
        args, kwargs = (x, _with(y, row, value)), {}
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):
        pu.forget(regression, guide, *args, erased=[0, 1], plate="data", posterior=posterior,
                  progress=False, **kwargs)  # fmt: skip


def _wider(x, y=None):
    return regression(torch.cat([x, x[:, :1]], -1), y)


@pytest.mark.parametrize(
    "other, error, match",
    [
        ("live-guide", TypeError, "FrozenPosterior"),
        ("other-shape", ValueError, r"'AutoNormal.locs.w' has shape \(2,\) in the guide, \(3,\)"),
        ("other-guide-class", ValueError, "structure"),
    ],
    ids=["live-guide", "other-shape", "other-guide-class"],
)
def test_posterior_of_another_guide(setup, unchanged, other, error, match):
    guide, posterior, x, y = setup
    if other == "live-guide":
        wrong = guide
    elif other == "other-shape":
        with pu.params.ParamSnapshot().active():
            wrong = pu.freeze(AutoNormal(_wider), x, y)
    else:
        wrong = pu.freeze(AutoMultivariateNormal(regression), x, y)
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.forget(regression, guide, x, y, erased=[0], plate="data", posterior=wrong,
                  progress=False)  # fmt: skip


@pytest.mark.parametrize("method", ["rkl", "eubo"])
def test_diverging_run_rolls_back(setup, unchanged, method):
    """The run starts (q(θ|D) is written into the guide, steps are taken) and then diverges:
    the cause is named and the guide is back where it was before the call."""
    guide, posterior, x, y = setup
    optim = pyro.optim.Adam({"lr": 1e30})
    with unchanged(guide, posterior), pytest.raises(ValueError, match="diverged"):
        pu.forget(regression, guide, x, y, erased=[0, 1], plate="data", posterior=posterior,
                  method=method, optim=optim, num_steps=20, progress=False)  # fmt: skip
