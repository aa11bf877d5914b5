"""Regression problems with exact Gaussian posteriors, shared by the tests that need them."""

import torch
from pyro.infer.autoguide import AutoMultivariateNormal

from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.experiments.datasets import linear_regression
from pyro_unlearn.experiments.linear_regression import linear_model
from pyro_unlearn.guides import write_gaussian


def poisoned_regression():
    """20 of 100 rows shifted by 3 in x and y: a cluster that moved the fit (KL(full ‖
    retrained) ≈ 37-46 nats). Returns ``(data, model, guide, retrained)``: the guide is an
    AutoMultivariateNormal holding the exact p(θ|D), ``retrained`` the exact p(θ|D_r) as
    ``(loc, cov)``."""
    data = linear_regression(num_erased=20, shift=3.0)

    def model(x, y=None):
        return linear_model(x, y, data.noise_scale)

    def exact(keep):
        features = torch.cat([data.x[keep], data.x.new_ones(int(keep.sum()), 1)], dim=-1)
        loc, precision = gaussian_linear_posterior(
            torch.zeros(3), torch.eye(3) / 100.0, features, data.y[keep], data.noise_scale
        )
        return loc, torch.linalg.inv(precision)

    keep = torch.ones(len(data.x), dtype=torch.bool)
    guide = AutoMultivariateNormal(model)
    guide(data.x, data.y)
    write_gaussian(guide, *exact(keep))
    keep[data.erased] = False
    return data, model, guide, exact(keep)
