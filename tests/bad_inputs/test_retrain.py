"""Bad inputs of pu.retrain: named before anything runs; the live guide and the store are left
as they are."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), 1.0), obs=y)


def _nan_at(t, row):
    t = t.clone()
    t[row] = math.nan
    return t


X, Y = torch.randn(8, 2), torch.randn(8)
CASES = {
    "init-unknown": (dict(init="scratch"), ValueError, "init must be"),
    "num_steps-zero": (dict(num_steps=0), ValueError, "num_steps"),
    "num_steps-fraction": (dict(num_steps=2.5), TypeError, "num_steps"),
    "window-negative": (dict(window=-5), ValueError, "window"),
    "lr-nan": (dict(lr=math.nan), ValueError, "lr"),
    "lr-string": (dict(lr="fast"), TypeError, "lr"),
    "num_particles-zero": (dict(num_particles=0), ValueError, "num_particles"),
    "optim-not-pyro": (dict(optim=torch.optim.Adam), TypeError, "optim"),
    "nan-y": (dict(args=(X, _nan_at(Y, 6))), ValueError, r"args\[1\].*\(nan\) at row 6"),
    "nan-x": (dict(args=(_nan_at(X, 2), Y)), ValueError, r"args\[0\].*\(nan\) at row 2"),
}


@pytest.mark.parametrize("kwargs, error, match", CASES.values(), ids=CASES.keys())
def test_bad_input(unchanged, kwargs, error, match):
    guide = AutoNormal(regression)
    guide(X, Y)
    posterior = pu.freeze(guide)
    args = kwargs.pop("args", (X, Y))
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.retrain(regression, guide, *args, progress=False, **kwargs)


def test_guide_function(unchanged):
    def guide(x, y=None):
        pyro.sample("w", dist.Normal(pyro.param("loc", torch.zeros(2)), 1.0).to_event(1))

    guide(X, Y)
    with unchanged(), pytest.raises(TypeError, match="PyroModule guide"):
        pu.retrain(regression, guide, X, Y, progress=False)
