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


def guide_function(x, y=None):
    pyro.sample("w", dist.Normal(pyro.param("loc", torch.zeros(2)), 1.0).to_event(1))


def test_guide_function_is_retrained_in_a_private_store(unchanged):
    """A guide function's parameters live in the param store: retrain trains copies of them in a
    private store (it refused guide functions before)."""
    guide_function(X, Y)
    with unchanged():
        result = pu.retrain(regression, guide_function, X, Y, num_steps=50, lr=0.1, progress=False)
    assert not torch.equal(result.posterior.params["loc"], pyro.param("loc").detach())


def no_parameters(x, y=None):
    pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))


class Fixed(pyro.nn.PyroModule):
    def forward(self, x, y=None):
        pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))


GUIDES = {
    "not-callable": (dict(guide=3), TypeError, "PyroModule guide.*got int"),
    "function-reads-no-param": (dict(guide=no_parameters), TypeError, "reads no parameter"),
    "function-without-its-arguments": (
        dict(guide=guide_function, args=()),
        TypeError,
        r"needs \['x'\].*pu.retrain\(guide_function, x\)",
    ),
    "prior-of-a-module-not-autoguide": (
        dict(guide=Fixed(), init="prior"),
        TypeError,
        "init='prior' re-initialises AutoGuides",
    ),
}


@pytest.mark.parametrize("kwargs, error, match", GUIDES.values(), ids=GUIDES.keys())
def test_bad_guide(unchanged, kwargs, error, match):
    guide_function(X, Y)
    guide, args = kwargs.pop("guide"), kwargs.pop("args", (X, Y))
    with unchanged(), pytest.raises(error, match=match):
        pu.retrain(regression, guide, *args, progress=False, **kwargs)
