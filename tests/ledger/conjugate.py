"""The ledger tests' model: the mean of 2-D Gaussian data, whose posterior is Gaussian in closed
form, with an AutoNormal guide set exactly to it (no training)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_unlearn.exact import normal_normal_posterior
from pyro_unlearn.guides import read_gaussian

NUM_ROWS = 40
PRIOR_SCALE = 3.0


def data() -> torch.Tensor:
    """40 rows of 2-D data, the same in every process."""
    generator = torch.Generator().manual_seed(7)
    return torch.randn(NUM_ROWS, 2, generator=generator) + torch.tensor([1.0, -0.5])


def model(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(2), PRIOR_SCALE).to_event(1))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=y)


def exact(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact posterior's mean and standard deviations given the rows ``y``."""
    prior_precision = torch.eye(2) / PRIOR_SCALE**2
    loc, precision = normal_normal_posterior(y.new_zeros(2), prior_precision, y, 1.0)
    return loc, torch.linalg.inv(precision).diagonal().sqrt()


def exact_guide(y: torch.Tensor) -> AutoNormal:
    """An AutoNormal guide holding the exact p(θ|y)."""
    guide = AutoNormal(model)
    guide(y)
    loc, scale = exact(y)
    guide.locs.mu = loc
    guide.scales.mu = scale
    return guide


def moments(posterior) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviations of a frozen AutoNormal posterior."""
    return read_gaussian(posterior, diagonal=True)
