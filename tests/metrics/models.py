"""Small models with known answers, shared by the metrics tests."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import init_to_value

from pyro_unlearn import freeze

__all__ = [
    "frozen_gaussian",
    "logistic",
    "point_mass",
    "regression",
    "scalar_regression",
    "softmax_model",
]


def regression(x, y=None):
    """y ~ N(x·w, s²), w ∈ R², s > 0 (the unconstrained space holds log s)."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 10.0).expand([2]).to_event(1))
    s = pyro.sample("s", dist.LogNormal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal((w * x).sum(-1), s), obs=y)


def logistic(x, y=None):
    """y ~ Bernoulli(σ(w x)), one scalar weight."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)


def softmax_model(x, y=None):
    """y ~ Categorical(softmax(w x + b)), x of shape (N, K), w scalar, b ∈ R^K."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    b = pyro.sample("b", dist.Normal(x.new_zeros(()), 1.0).expand(x.shape[-1:]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Categorical(logits=w.unsqueeze(-1) * x + b), obs=y)


def scalar_regression(x, y=None):
    """y ~ N(w x, s²), scalar w and s."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
    s = pyro.sample("s", dist.LogNormal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(w * x, s), obs=y)


def point_mass(**values):
    """A guide putting θ at ``values`` (Delta sites; vector values get event_dim 1)."""

    def guide(x, y=None):
        for name, value in values.items():
            value = x.new_tensor(value)
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))

    return guide


def frozen_gaussian(cls, loc_w, s, scale, x, y):
    init = init_to_value(values={"w": torch.tensor(loc_w), "s": torch.tensor(s)})
    return freeze(cls(regression, init_loc_fn=init, init_scale=scale), x, y)
