"""Retraining on D_r (pyro_unlearn/retrain.py): the reference, against the exact posterior."""

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import gaussian_kl
from pyro_unlearn.results import UnlearningResult


@pytest.mark.parametrize("init", ["posterior", "prior"])
def test_retrain_reaches_the_exact_posterior_of_the_remaining_data(
    init, linreg, model, trained, exact_posterior
):
    guide = trained(AutoMultivariateNormal)
    live_before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    keep = linreg.remaining
    result = pu.retrain(
        model,
        guide,
        linreg.x[keep],
        linreg.y[keep],
        init=init,
        num_steps=1500,
        lr=0.02,
        progress=False,
    )
    target = exact_posterior(keep)
    loc, cov = target.loc, target.covariance_matrix
    kl = float(gaussian_kl(*read_gaussian(result.posterior), loc, cov))
    assert kl < 0.05, kl
    assert len(result.losses) <= 1500
    assert isinstance(result, UnlearningResult)
    # the reference is not judged: verdict None, and the explanation says why and how it ended
    assert result.verdict is None and result.trust is None
    assert result.summary().startswith("not judged: retrained on D_r, the reference")
    assert f"after {len(result.losses)} steps" in result.summary()
    assert ("not converged" in result.summary()) is not result.converged
    assert result.trust_row["verdict"] is None
    # the live guide and the param store are untouched
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), live_before[name]), name
    assert set(pyro.get_param_store().keys()) == set(live_before)


def test_warm_start_starts_at_q_of_d(linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    keep = linreg.remaining
    start = pu.retrain(
        model, guide, linreg.x[keep], linreg.y[keep], num_steps=1, lr=1e-9, progress=False
    )
    fresh = pu.retrain(
        model,
        guide,
        linreg.x[keep],
        linreg.y[keep],
        init="prior",
        num_steps=1,
        lr=1e-9,
        progress=False,
    )
    loc, _ = read_gaussian(guide)
    assert torch.allclose(read_gaussian(start.posterior)[0], loc, atol=1e-6)
    assert not start.converged and start.verdict is None
    assert "not converged after 1 steps: the reference is still moving" in start.summary()
    assert not torch.allclose(read_gaussian(fresh.posterior)[0], loc, atol=0.1)


def test_retrain_rejects_bad_input(model):
    with pytest.raises(ValueError, match="init must be"):
        pu.retrain(model, AutoMultivariateNormal(model), init="scratch")
    with pytest.raises(TypeError, match="PyroModule guide"):
        pu.retrain(model, lambda *a: None)
