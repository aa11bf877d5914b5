import pytest
import torch

from pyro_unlearn.exact import NotNormalizableError, gaussian_linear_unlearn


def posterior(F, y, noise=0.5, prior_var=100.0):
    prec = torch.eye(F.shape[1], dtype=F.dtype) / prior_var + F.T @ F / noise**2
    return torch.linalg.solve(prec, F.T @ y / noise**2), prec


def test_division_equals_the_posterior_of_the_remaining_data():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randn(40, generator=g, dtype=torch.float64)
    loc, prec = posterior(F, y)
    loc_r, prec_r = posterior(F[8:], y[8:])
    new_loc, new_prec = gaussian_linear_unlearn(loc, prec, F[:8], y[:8], 0.5)
    assert torch.allclose(new_prec, prec_r)
    assert torch.allclose(new_loc, loc_r)


def test_erasing_points_never_seen_is_not_normalisable():
    F = torch.randn(30, 2, dtype=torch.float64)
    loc, prec = posterior(F[:3], torch.zeros(3, dtype=torch.float64))
    with pytest.raises(NotNormalizableError, match="positive definite"):
        gaussian_linear_unlearn(loc, prec, F, torch.zeros(30, dtype=torch.float64), 0.5)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="features"):
        gaussian_linear_unlearn(torch.zeros(2), torch.eye(2), torch.ones(3), torch.ones(3), 1.0)
