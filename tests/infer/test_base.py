"""Behaviour shared by Trace_EUBO and ReverseKL (pyro_unlearn/infer/base.py)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

import pyro_unlearn as pu
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.infer import base
from pyro_unlearn.metrics import gaussian_kl

LOSSES = [pu.Trace_EUBO, pu.ReverseKL]


def unlearn_steps(model, guide, loss, args, steps, lr=0.02, **unlearn_kwargs):
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / steps)})
    svi = SVI(pu.unlearn(model, **unlearn_kwargs), guide, optim, loss)
    for _ in range(steps):
        svi.step(*args)


def kl_to(guide, loc, cov):
    m, c = read_gaussian(guide)
    return float(gaussian_kl(m, c, loc, cov))


def erased_data(linreg):
    return linreg.x[linreg.erased], linreg.y[linreg.erased]


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_exact_target_full_covariance(loss_cls, linreg, model, trained, exact_target):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    before = kl_to(guide, loc, cov)
    posterior = pu.freeze(guide)
    # ReverseKL's self-normalised importance sampling is biased by O(1/num_particles).
    particles = 4096 if loss_cls is pu.ReverseKL else 256
    loss = loss_cls(posterior, 0.0, num_particles=particles, vectorize_particles=True)
    unlearn_steps(model, guide, loss, erased_data(linreg), steps=600)
    after = kl_to(guide, loc, cov)
    assert before > 0.5  # the erased cluster is informative (≈ 1 in closed form)
    assert after < 0.01, (before, after)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize(
    "guide_cls", [AutoNormal, AutoDiagonalNormal, AutoLowRankMultivariateNormal]
)
def test_kl_to_target_drops(loss_cls, guide_cls, linreg, model, trained, exact_target):
    guide = trained(guide_cls)
    loc, cov = exact_target(guide)
    before = kl_to(guide, loc, cov)
    loss = loss_cls(pu.freeze(guide), 0.0, num_particles=512, vectorize_particles=True)
    unlearn_steps(model, guide, loss, erased_data(linreg), steps=300)
    assert kl_to(guide, loc, cov) < 0.5 * before


def moved(loss_cls, lam, guide, model, linreg, posterior, start, steps=300):
    posterior.restore(guide)
    loss = loss_cls(posterior, lam, num_particles=512, vectorize_particles=True)
    unlearn_steps(model, guide, loss, erased_data(linreg), steps=steps)
    return kl_to(guide, *start)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_larger_lambda_moves_less(loss_cls, linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    posterior = pu.freeze(guide)
    start = tuple(t.clone() for t in read_gaussian(guide))
    kl = {
        lam: moved(loss_cls, lam, guide, model, linreg, posterior, start)
        for lam in (0.0, 1e-3, 0.5, 1.0)
    }
    assert kl[1.0] < 0.02  # λ = 1 unlearns nothing: the guide stays at q(θ|D)
    assert kl[1.0] < kl[0.5] < kl[1e-3] <= 1.2 * kl[0.0], kl


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_frozen_posterior_and_model_params_do_not_move(loss_cls, linreg, trained):
    def model(x, y=None):
        noise = pyro.param("noise", torch.tensor(0.5), constraint=dist.constraints.positive)
        w = pyro.sample("w", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 10.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal((w * x).sum(-1) + b, noise), obs=y)

    guide = AutoMultivariateNormal(model)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    frozen = {k: v.clone() for k, v in posterior.state_dict()["params"].items()}
    noise = pyro.param("noise").detach().clone()
    loss = loss_cls(posterior, 0.0, num_particles=64, vectorize_particles=True)
    unlearn_steps(model, guide, loss, erased_data(linreg), steps=20, lr=0.1)
    assert torch.equal(pyro.param("noise").detach(), noise)
    live = dict(pyro.get_param_store().named_parameters())
    for name, value in posterior.state_dict()["params"].items():
        assert torch.equal(value, frozen[name])
        assert not torch.equal(live[name].detach(), value)  # the live guide did train


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_full_data_with_erased_indices_equals_erased_data(loss_cls, linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    # max_plate_nesting given: guessing it would draw from the guide (and the RNG) once
    loss = loss_cls(
        pu.freeze(guide), 1e-3, num_particles=32, vectorize_particles=True, max_plate_nesting=1
    )
    pyro.set_rng_seed(1)
    alone = loss.loss(pu.unlearn(model), guide, *erased_data(linreg))
    pyro.set_rng_seed(1)
    named = pu.unlearn(model, erased=linreg.erased, plate="data")
    indexed = loss.loss(named, guide, linreg.x, linreg.y)
    mask = torch.zeros(len(linreg.y), dtype=torch.bool)
    mask[linreg.erased] = True
    pyro.set_rng_seed(1)
    masked = loss.loss(pu.unlearn(model, erased=mask, plate="data"), guide, linreg.x, linreg.y)
    assert indexed == pytest.approx(alone, rel=1e-5)
    assert masked == pytest.approx(alone, rel=1e-5)


def test_subsampling_plate_is_unbiased(linreg, trained):
    """With a subsampling plate the EUBO is an unbiased estimate of the erased-data one."""
    n = len(linreg.y)

    def model(x, y=None, subsample_size=None):
        w = pyro.sample("w", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 10.0))
        with pyro.plate("data", n, subsample_size=subsample_size) as idx:
            pyro.sample("y", dist.Normal((w * x[idx]).sum(-1) + b, 0.5), obs=y[idx])

    guide = AutoMultivariateNormal(model)
    guide(linreg.x, linreg.y)
    loss = pu.Trace_EUBO(pu.freeze(guide), 0.0, num_particles=1)
    pyro.set_rng_seed(0)
    erased = pu.unlearn(model, erased=linreg.erased, plate="data")
    full = torch.tensor([loss.loss(erased, guide, linreg.x, linreg.y) for _ in range(400)])
    pyro.set_rng_seed(0)
    shares = pu.unlearn(model, erased=linreg.erased, plate="data", subsample="batch")
    sub = torch.tensor(
        [loss.loss(shares, guide, linreg.x, linreg.y, subsample_size=50) for _ in range(400)]
    )
    # Same guide draws (seeded) in both runs; the batch's share adds only zero-mean noise.
    diff = sub - full
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(diff))
    assert diff.std() > 0  # subsampling did happen
    # by default the batch is D_e itself (padded to 50 rows): the full-data loss exactly
    pyro.set_rng_seed(0)
    whole = [loss.loss(erased, guide, linreg.x, linreg.y, subsample_size=50) for _ in range(5)]
    assert torch.allclose(torch.tensor(whole), full[:5], rtol=1e-5)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "big"])
def test_bad_lambda(loss_cls, lam, model):
    guide = AutoNormal(model)
    guide(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises((ValueError, TypeError), match="lam"):
        loss_cls(pu.freeze(guide), lam)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_live_guide_is_not_a_posterior(loss_cls, model):
    guide = AutoNormal(model)
    with pytest.raises(TypeError, match="freeze"):
        loss_cls(guide)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_posterior_of_another_structure(loss_cls, linreg, model):
    other = AutoNormal(model)
    other(linreg.x, linreg.y)
    guide = AutoMultivariateNormal(model)
    guide(linreg.x, linreg.y)
    loss = loss_cls(pu.freeze(other), num_particles=4, vectorize_particles=True)
    with pytest.raises(ValueError, match="cannot score this guide"):
        loss.loss(pu.unlearn(model), guide, *erased_data(linreg))


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_model_without_unlearn(loss_cls, linreg, model):
    guide = AutoNormal(model)
    guide(linreg.x, linreg.y)
    loss = loss_cls(pu.freeze(guide), num_particles=4, vectorize_particles=True)
    with pytest.raises(ValueError, match="no erased observations"):
        loss.loss(model, guide, *erased_data(linreg))


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_non_finite_loss_is_reported_as_pyro_does(loss_cls, linreg, model):
    """As Pyro's losses: a warning (``warn_if_nan`` / ``warn_if_inf``), which says why. Under
    validation, non-finite data are named as such (argument and row) before any loss is made."""
    guide = AutoNormal(model)
    guide(linreg.x, linreg.y)
    loss = loss_cls(pu.freeze(guide), num_particles=4, vectorize_particles=True)
    x, y = erased_data(linreg)
    with pytest.raises(ValueError, match=r"args\[1\] has a non-finite value \(inf\) at row 0"):
        loss.loss(pu.unlearn(model), guide, x, torch.full_like(y, math.inf))
    pyro.enable_validation(False)
    try:
        with pytest.warns(UserWarning, match="Encountered .*normalisable"):
            value = loss.loss(pu.unlearn(model), guide, x, torch.full_like(y, math.inf))
    finally:
        pyro.enable_validation(True)
    assert not math.isfinite(value)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_site_checks_run_only_under_validation(loss_cls, linreg, model, monkeypatch):
    """The per-step check of the guide's sites against the posterior's is Pyro-style validation:
    on under ``pyro.enable_validation(True)``, skipped (for speed) without."""
    calls = []
    monkeypatch.setattr(base, "check_sites_match", lambda *sites: calls.append(sites))
    guide = AutoNormal(model)
    guide(linreg.x, linreg.y)
    loss = loss_cls(pu.freeze(guide), num_particles=4, max_plate_nesting=1)
    loss.loss(pu.unlearn(model), guide, *erased_data(linreg))
    assert len(calls) == 4  # once per (sequential) particle
    with pyro.validation_enabled(False):
        loss.loss(pu.unlearn(model), guide, *erased_data(linreg))
    assert len(calls) == 4


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("vectorize", [False, True])
def test_get_trace_returns_the_traces_of_a_particle(loss_cls, vectorize, linreg, model):
    """Pyro's hook keeps Pyro's meaning: ``_get_traces`` yields traces (model, guide and frozen
    posterior, run at the same θ), one per particle or one for all vectorised particles."""
    guide = AutoNormal(model)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    loss = loss_cls(posterior, num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    traces = list(loss._get_traces(pu.unlearn(model), guide, erased_data(linreg), {}))
    assert len(traces) == (1 if vectorize else 3)
    for model_trace, guide_trace, posterior_trace in traces:
        assert model_trace.nodes["y"]["infer"]["erased"] is True
        for site in posterior.sites:
            theta = guide_trace.nodes[site]["value"]
            assert not vectorize or theta.shape[0] == 3  # the particle dim leads
            assert torch.equal(posterior_trace.nodes[site]["value"], theta)


def test_diagnostics_of_the_eubo_are_empty(linreg, model):
    guide = AutoNormal(model)
    guide(linreg.x, linreg.y)
    loss = pu.Trace_EUBO(pu.freeze(guide), num_particles=4, vectorize_particles=True)
    loss.loss(pu.unlearn(model), guide, *erased_data(linreg))
    assert loss.diagnostics() == {}


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_sequential_particles(loss_cls, linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    loss = loss_cls(
        pu.freeze(guide), 1e-3, num_particles=8, vectorize_particles=False, max_plate_nesting=1
    )
    value = loss.loss_and_grads(pu.unlearn(model), guide, *erased_data(linreg))
    assert math.isfinite(value)
    assert differentiable_matches(loss, model, guide, linreg)


def differentiable_matches(loss, model, guide, linreg):
    pyro.set_rng_seed(3)
    a = loss.loss(pu.unlearn(model), guide, *erased_data(linreg))
    pyro.set_rng_seed(3)
    b = loss.differentiable_loss(pu.unlearn(model), guide, *erased_data(linreg))
    return b.requires_grad and float(b.detach()) == pytest.approx(a, rel=1e-5)
