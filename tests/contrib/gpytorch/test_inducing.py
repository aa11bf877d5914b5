"""q(u): writing it in every parameterisation, freezing it, and the renamed 0.1.0 names."""

from __future__ import annotations

import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.contrib import gpytorch as pug
from tests.contrib.gpytorch.closed_form import GP, KINDS, trained


@pytest.mark.parametrize("kind", list(KINDS))
def test_set_inducing_distribution_in_every_parameterisation(data, kind):
    x, _, _, _ = data
    gp = GP(x[::6].clone(), kind=KINDS[kind]).double()
    m = len(x[::6])
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(m, generator=g, dtype=x.dtype)
    root = torch.randn(m, m, generator=g, dtype=x.dtype)
    cov = root @ root.T / m + 0.1 * torch.eye(m, dtype=x.dtype)
    if kind == "mean_field":
        cov = torch.diag(cov.diagonal())
    pug.set_inducing_distribution(gp, mean, cov)
    q = pug.inducing_distribution(gp)
    assert torch.allclose(q.mean, mean, atol=1e-10)
    assert torch.allclose(q.covariance_matrix, cov, atol=1e-10)
    gp(x)  # marked initialised: GPyTorch's first call does not reset it to the prior
    assert torch.allclose(pug.inducing_distribution(gp).mean, mean, atol=1e-10)


def test_frozen_q_is_an_independent_copy(data):
    x, y, _, _ = data
    gp = trained(x, y)
    posterior = pug.freeze_inducing(gp)
    before = pug.inducing_distribution(posterior).mean.clone()
    q = pug.inducing_distribution(gp)
    pug.set_inducing_distribution(gp, q.mean + 1.0, q.covariance_matrix)
    assert torch.equal(pug.inducing_distribution(posterior).mean, before)
    # KL of two Gaussians that differ by a unit mean shift in whitened space: ½‖Δ‖²_Σ⁻¹
    shift = torch.ones_like(before).unsqueeze(-1)
    expected = 0.5 * float(shift.mT @ torch.linalg.solve(q.covariance_matrix, shift))
    assert float(pug.inducing_kl(gp, posterior)) == pytest.approx(expected, rel=1e-8)


def test_freeze_refuses_an_uninitialised_gp(data):
    x, _, _, _ = data
    with pytest.raises(ValueError, match="never initialised"):
        pug.freeze_inducing(GP(x[::6].clone()).double())


def test_renamed_names_warn_and_leave_the_public_face():
    """0.1.0's freeze / erased_log_likelihood shadowed pu.freeze / pu.erased_log_likelihood,
    which take other arguments: they still resolve, with a FutureWarning naming the new name."""
    for old, new in [
        ("freeze", "freeze_inducing"),
        ("erased_log_likelihood", "inducing_log_likelihood"),
    ]:
        with pytest.warns(FutureWarning, match=new):
            assert getattr(pug, old) is getattr(pug, new)
        assert old not in pug.__all__ and getattr(pu, old) is not getattr(pug, new)
    with pytest.raises(AttributeError, match="no_such_name"):
        pug.no_such_name  # noqa: B018
