"""Erasing single outputs of a row (a batch GP, whose likelihood factorises over outputs): the
outputs that stay are NaN under GPyTorch's ``observation_nan_policy("mask")``."""

from __future__ import annotations

import gpytorch
import pytest
import torch

from pyro_unlearn.contrib import gpytorch as pug
from tests.contrib.gpytorch.closed_form import GP, KINDS, gaussian_likelihood, optimal, trained


def _two_outputs(x, y, kind):
    """A batch GP of two outputs at the ELBO optima of (y, 0.5 y + 0.3), and those optima."""
    single = trained(x, y)
    optima = [optimal(single, x, y), optimal(single, x, 0.5 * y + 0.3)]
    gp = GP(x[::6].clone(), batch_shape=[2], kind=KINDS[kind]).double()
    gp(x)
    mean = torch.stack([loc for loc, _ in optima])
    cov = torch.stack([torch.linalg.inv(precision) for _, precision in optima])
    pug.set_inducing_distribution(gp, mean, cov)
    return gp, single, optima


def _kl(gp, t, loc, precision):
    q = pug.inducing_distribution(gp)
    mine = gpytorch.distributions.MultivariateNormal(q.mean[t], q.covariance_matrix[t])
    target = gpytorch.distributions.MultivariateNormal(loc, torch.linalg.inv(precision))
    return float(torch.distributions.kl_divergence(mine, target))


@pytest.mark.parametrize("kind", ["natural", "tril_natural"])
def test_erasing_one_output_of_the_cluster_lands_on_its_closed_form(data, kind):
    """Erase output 0 of the cluster's rows only: λ = 0 EUBO steps of GPyTorch's NGD at lr 1
    land output 0 on the closed-form q(u_0|D_r) (natural parameters: in one step, KL < 1e-8;
    triangular ones: in ten, KL < 1e-6) and leave output 1 at q(u_1|D)."""
    x, y, erased, keep = data
    gp, single, optima = _two_outputs(x, y, kind)
    target = optimal(single, x[keep], y[keep])
    y_e = torch.stack([y, 0.5 * y + 0.3])[:, erased]
    y_e[1] = float("nan")  # output 1 of these rows stays
    likelihood = gaussian_likelihood([2])
    with gpytorch.settings.observation_nan_policy("mask"):
        eubo = pug.VariationalEUBO(likelihood, gp, pug.freeze_inducing(gp), len(erased))
        optimizer = gpytorch.optim.NGD(gp.variational_parameters(), num_data=len(erased), lr=1.0)
        for _ in range(1 if kind == "natural" else 10):
            optimizer.zero_grad()
            (-eubo(gp(x[erased]), y_e).sum()).backward()
            optimizer.step()
    assert _kl(gp, 0, *target) < (1e-8 if kind == "natural" else 1e-6)
    assert _kl(gp, 1, *optima[1]) < 1e-8
    assert _kl(gp, 0, *optima[0]) > 1.0  # the cluster moved output 0


def test_nan_targets_are_refused_without_the_mask_policy(data):
    """Without GPyTorch's mask policy a NaN target is an error in the data, named with its row
    (the default, "ignore"), not a cell left out."""
    x, y, erased, _ = data
    gp, _, _ = _two_outputs(x, y, "natural")
    y_e = torch.stack([y, y])[:, erased]
    y_e[1, 3] = float("nan")
    eubo = pug.VariationalEUBO(gaussian_likelihood([2]), gp, pug.freeze_inducing(gp), len(erased))
    with pytest.raises(ValueError, match="non-finite value"):
        eubo(gp(x[erased]), y_e, inputs=x[erased])


def test_precision_share_and_likelihood_leave_masked_cells_out(data):
    """The erased precision share and log p̃(D_e|u) see only the erased cells: with output 1
    masked, log p̃ is output 0's alone and the share is the one-output GP's on the same rows;
    masking half of output 0's rows too lowers it."""
    x, y, erased, _ = data
    gp, single, _ = _two_outputs(x, y, "natural")
    likelihood = gaussian_likelihood([2])
    posterior = pug.freeze_inducing(gp)
    y_e = torch.stack([y, y])[:, erased]
    masked = y_e.clone()
    masked[1] = float("nan")
    u = pug.inducing_distribution(gp).sample(torch.Size([8]))
    x_e = x[erased]
    with gpytorch.settings.observation_nan_policy("mask"):
        share = pug.erased_precision_share(gp, likelihood, posterior, x_e, masked)
        value = pug.inducing_log_likelihood(gp, likelihood, u, x_e, masked)
        masked[0, :6] = float("nan")
        half = pug.erased_precision_share(gp, likelihood, posterior, x_e, masked)
    per_output = pug.conditional.per_output_log_likelihood(gp, likelihood, u, x_e, y_e)
    assert torch.allclose(value, per_output[:, 0], rtol=1e-12)
    one = pug.erased_precision_share(
        single, gaussian_likelihood(), pug.freeze_inducing(single), x_e, y[erased]
    )
    assert share == pytest.approx(one, rel=1e-8)
    assert 0.0 < half < share - 0.05
