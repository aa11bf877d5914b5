import pytest
import torch

import pyro_unlearn as pu
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


def test_posterior_then_unlearn_is_the_posterior_without_the_erased_points():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, generator=g, dtype=torch.float64)
    prior_loc, prior_prec = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    loc, prec = pu.exact.gaussian_linear_posterior(prior_loc, prior_prec, X, y, 0.7)
    # closed form by hand: Λ_D = I + XᵀX/σ², μ_D = Λ_D⁻¹ Xᵀy/σ²
    expected_prec = prior_prec + X.T @ X / 0.49
    assert torch.allclose(prec, expected_prec)
    assert torch.allclose(loc, torch.linalg.solve(expected_prec, X.T @ y / 0.49))
    rem_loc, rem_prec = pu.exact.gaussian_linear_posterior(prior_loc, prior_prec, X[5:], y[5:], 0.7)
    un_loc, un_prec = pu.exact.gaussian_linear_unlearn(loc, prec, X[:5], y[:5], 0.7)
    assert torch.allclose(un_prec, rem_prec)
    assert torch.allclose(un_loc, rem_loc)
