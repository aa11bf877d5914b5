"""The banknote experiment's pieces (pyro_unlearn/experiments/banknote.py); the whole run is
exercised by tests/test_cli.py and tutorials/banknote.ipynb."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.experiments import banknote as experiment
from pyro_unlearn.experiments import datasets
from pyro_unlearn.metrics import predictive_distribution


@pytest.fixture(scope="module")
def data():
    return datasets.banknote()


def test_logistic_model_vectorises_over_particles(data):
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(experiment.logistic_model).get_trace(data.x, data.y)
    trace.compute_log_prob()
    assert trace.nodes["y"]["log_prob"].shape == (7, len(data.y))


@pytest.mark.parametrize("name", ["mvn", "maf"])
def test_training_starts_at_the_laplace_approximation(name, data):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide, info = experiment.train_full_posterior(
        name, data.x, data.y, map_steps=200, train_steps=0, progress=False
    )
    # L-BFGS found the MAP: the log joint's gradient vanishes there
    theta = torch.tensor(info["map"], requires_grad=True)
    conditioned = poutine.condition(experiment.logistic_model, {"w": theta[:4], "b": theta[4]})
    log_joint = poutine.trace(conditioned).get_trace(data.x, data.y).log_prob_sum()
    (grad,) = torch.autograd.grad(log_joint, theta)
    assert grad.abs().max() < 0.05  # float32 L-BFGS; at θ = 0 it is in the hundreds
    # with no ELBO steps q(θ|D) is the Laplace approximation (Monte Carlo for the flow)
    assert info["kl_vi_to_laplace"] < (1e-4 if name == "mvn" else 0.02)
    # and its parameters are trainable (Pyro's laplace_approximation() holds buffers)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    svi = SVI(experiment.logistic_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(data.x, data.y)
    moved = [
        k
        for k, v in pyro.get_param_store().items()
        if k in before and not torch.equal(v, before[k])
    ]
    assert any(k.startswith(type(guide).__name__) for k in moved)


def test_mia_holdout_rows_are_a_stratified_part_of_d_e(data):
    rows = experiment.mia_holdout_rows(data, 100, seed=0)
    assert len(rows) == len(rows.unique()) == 100
    assert bool(torch.isin(rows, data.erased).all())
    share = float(data.y[data.erased].mean())  # class 1's share of D_e: 198 / 412
    assert int(data.y[rows].sum()) == round(100 * share)
    assert torch.equal(rows, experiment.mia_holdout_rows(data, 100, seed=0))
    assert not torch.equal(rows, experiment.mia_holdout_rows(data, 100, seed=1))
    assert len(experiment.mia_holdout_rows(data, 0)) == 0
    with pytest.raises(ValueError, match=r"mia_holdout must be in \[0, 407\]"):
        experiment.mia_holdout_rows(data, 408)


def test_run_holds_rows_out_for_membership_inference(data):
    tiny = dict(
        guides=("mvn",),
        lambdas={"mvn": (0.0,)},
        map_steps=50,
        train_steps=20,
        retrain_steps=20,
        unlearn_steps=5,
        window=5,
        num_particles=16,
        num_eval_samples=50,
        progress=False,
    )
    results = experiment.run(mia_holdout=50, **tiny)
    settings = results["settings"]
    assert (settings["num_data"], settings["num_erased"]) == (1372 - 50, 412 - 50)
    retrained = results["mia"]["mvn"]["retrained"]
    for row in [*results["rows"], retrained]:
        assert all(math.isfinite(row[k]) for k in experiment.MIA_COLUMNS)  # the attacks ran
    # the paper's protocol (the default): no non-members, the columns empty, and said why
    results = experiment.run(**tiny)
    assert results["settings"]["num_data"] == 1372
    assert all(row[k] is None for row in results["rows"] for k in experiment.MIA_COLUMNS)
    assert "mia_holdout" in results["mia"]["note"]


def test_quadrature_predictive_checks_its_input(data):
    q = pu.freeze(AutoMultivariateNormal(experiment.logistic_model), data.x[:3], data.y[:3])
    with pytest.raises(ValueError, match=r"x must be \(points, 4\) for a posterior over 5"):
        experiment.quadrature_predictive(q, data.x[:3, :3])
    with pytest.raises(ValueError, match=r"num_nodes must be in \[1, 300\], got 0"):
        experiment.quadrature_predictive(q, data.x[:3], num_nodes=0)
    flow = pu.freeze(pu.AutoZukoFlow(experiment.logistic_model, "maf"), data.x[:3], data.y[:3])
    with pytest.raises(TypeError, match="Gaussian AutoGuide"):
        experiment.quadrature_predictive(flow, data.x[:3])
    with pytest.raises(ValueError, match="seeds is empty"):
        experiment.membership_study(seeds=())


def test_membership_study_is_paired_and_free_of_monte_carlo_noise(data):
    lambdas = (1e-3, 0.0)
    study = experiment.membership_study(
        seeds=(0,),
        mia_holdout=50,
        lambdas=lambdas,
        map_steps=100,
        train_steps=0,  # q(θ|D) is the Laplace approximation
        retrain_steps=300,
        unlearn_steps=300,
        window=50,
        num_particles=128,
        mia_repeats=1,
        progress=False,
        keep_posteriors=True,
    )
    rows = {r["posterior"]: r for r in study["rows"]}
    unlearned = [f"{m} λ={lam:g}" for lam in lambdas for m in ("eubo", "rkl")]
    assert list(rows) == ["full", "retrained", "retrained again", *unlearned]
    for row in rows.values():
        assert all(math.isfinite(row[k]) for k in experiment.MIA_COLUMNS)  # the attacks ran
    assert rows["full"]["loss_to_full"] == rows["retrained"]["loss_to_retrained"] == 0.0
    comparisons = {(c["posterior"], c["metric"]) for c in study["comparisons"]}
    assert comparisons == {(u, m) for u in unlearned for m in experiment.MIA_STUDY_METRICS}
    assert [s["posterior"] for s in study["summary"]] == list(rows)

    # the quadrature predictive is the Monte-Carlo one without its noise (10⁵ draws: ~1e-4)
    posteriors = study["posteriors"][0]
    x = data.x[data.erased][:100]
    for name in ("full", "rkl λ=0"):
        pyro.set_rng_seed(0)
        mc = predictive_distribution(
            experiment.logistic_model, posteriors[name], x, site="y", num_samples=100_000
        ).probs
        exact = experiment.quadrature_predictive(posteriors[name], x)[:, 1].exp()
        assert torch.allclose(exact, mc, atol=1e-3, rtol=0)

    # paired, per example on D_e: unlearning moves the losses towards the retrained posterior's
    full = rows["full"]["loss_to_retrained"]
    assert full > 2 * rows["retrained again"]["loss_to_retrained"]  # resolved above VI noise
    for name in ("eubo λ=0.001", "rkl λ=0.001", "rkl λ=0"):
        assert rows[name]["loss_to_retrained"] < full, name
