"""Bad inputs of pu.lambda_sweep: named before any run; a sweep that fails part-way leaves the
live guide as it was before the call."""

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


def _metrics(posterior):
    return {"n": len(posterior.sites)}


X, Y = torch.randn(8, 2), torch.randn(8)
Y_NAN = Y.clone()
Y_NAN[5] = math.nan

CASES = {
    "lambda-above-one": (dict(lambdas=[0.1, 2.0]), ValueError, "lam"),
    "lambda-string": (dict(lambdas=["0.1"]), TypeError, "lam"),
    "lambdas-empty": (dict(lambdas=[]), ValueError, "lambdas must be a non-empty"),
    "lambdas-string": (dict(lambdas="0.1"), ValueError, "lambdas must be a non-empty"),
    "masses-and-lambdas": (dict(lambdas=[0.1], masses=[0.5]), ValueError, "not both"),
    "mass-zero": (dict(masses=[0.5, 0.0]), ValueError, r"mass must be a number in \(0, 1\]"),
    "mass-above-one": (dict(masses=[1.5]), ValueError, r"mass .* got 1.5"),
    "mass-nan": (dict(masses=[math.nan]), ValueError, r"mass .* got nan"),
    "mass-string": (dict(masses=["0.5"]), TypeError, "mass must be"),
    "masses-empty": (dict(masses=[]), ValueError, "masses must be a non-empty"),
    "masses-string": (dict(masses="0.5"), ValueError, "masses must be a non-empty"),
    "mass-for-forget": (dict(mass=0.5), TypeError, r"unknown argument\(s\) \['mass'\]"),
    "methods-empty": (dict(methods=[]), ValueError, "methods must be a non-empty"),
    "methods-unknown": (dict(methods=["eubo", "mcmc"]), ValueError, "methods must be among"),
    "methods-string": (dict(methods="rkl"), ValueError, "methods must be a non-empty"),
    "evaluate-none": (dict(evaluate=None), TypeError, "evaluate must be a function"),
    "evaluate-returns-list": (dict(evaluate=lambda q: [1.0]), TypeError, "return a dict"),
    "unknown-forget-argument": (
        dict(num_step=5),
        TypeError,
        r"unknown argument\(s\) \['num_step'\]",
    ),
    "forget-option-bad": (dict(num_steps=0), ValueError, "num_steps"),
    "posterior-live-guide": (dict(posterior="guide"), TypeError, "FrozenPosterior"),
    "nan-data": (dict(y=Y_NAN), ValueError, r"args\[1\].*\(nan\) at row 5"),
    "evaluate-fails-after-a-run": (dict(evaluate="fails-second"), ValueError, "metric failed"),
    "diverges": (
        dict(lambdas=[0.5, 0.0], optim=pyro.optim.Adam({"lr": 1e30}), num_steps=5),
        ValueError,
        "diverged",
    ),
}


@pytest.mark.parametrize("kwargs, error, match", CASES.values(), ids=CASES.keys())
def test_bad_input(unchanged, kwargs, error, match):
    guide = AutoNormal(regression)
    guide(X, Y)
    posterior = pu.freeze(guide)
    with torch.no_grad():
        pyro.param("AutoNormal.locs.w").add_(1.0)  # the live guide moved on from q(θ|D)
    y = kwargs.pop("y", Y)
    if kwargs.get("evaluate") == "fails-second":  # after one run has trained the guide
        calls = []

        def evaluate(posterior):
            calls.append(posterior)
            if len(calls) == 2:
                raise ValueError("metric failed")
            return {}

        kwargs["evaluate"] = evaluate
    if kwargs.get("posterior") == "guide":
        kwargs["posterior"] = guide
    options = dict(evaluate=_metrics, erased=[0, 1], plate="data", num_steps=3, progress=False)
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.lambda_sweep(regression, guide, X, y, **{**options, **kwargs})
