"""Test helper: put a given Gaussian into a live guide's parameters."""

from __future__ import annotations

import torch
from pyro.infer.autoguide import AutoMultivariateNormal

from pyro_unlearn.metrics import guide_moments


def hold_gaussian(guide: AutoMultivariateNormal, loc: torch.Tensor, precision: torch.Tensor):
    """Make a set-up AutoMultivariateNormal hold N(loc, precision⁻¹) in its parameters."""
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    with torch.no_grad():
        guide.loc.copy_(loc)
    guide.scale = chol.diagonal().clone()
    guide.scale_tril = (chol / chol.diagonal()[:, None]).clone()
    held_loc, held_cov = guide_moments(guide)
    assert torch.allclose(held_loc, loc) and torch.allclose(held_cov.inverse(), precision)
    return guide
