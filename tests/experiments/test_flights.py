"""The flights experiment's pieces (pyro_unlearn/experiments/flights.py) on a small subset; the
whole quick run is exercised by tests/test_cli.py."""

import math

import pytest
import torch

from pyro_unlearn.contrib.gpytorch import freeze_inducing, inducing_distribution, inducing_kl
from pyro_unlearn.experiments import flights as experiment
from pyro_unlearn.experiments.datasets import flights


@pytest.fixture(scope="module")
def trained():
    data = flights(subset=4000, seed=0)
    gp, likelihood, info = experiment.train_svgp(
        data.x_train, data.y_train, num_inducing=20, train_steps=400, window=50, progress=False
    )
    return data, gp, likelihood, info


def test_training_learns_hyperparameters_and_the_optimal_q(trained):
    data, gp, likelihood, info = trained
    assert abs(info["noise"] - math.log(2)) > 0.05  # learned: GPyTorch starts at softplus(0)
    assert len(set(info["lengthscales"])) == 8  # ARD: one lengthscale per input
    # q(u|D) was set to its closed-form optimum: ELBO gradient in q(u) vanishes there
    optimum = experiment.optimal_q(gp, likelihood, data.x_train, data.y_train)
    assert experiment.kl_to(gp, optimum) < 1e-3 < info["svi_kl_to_optimum"]
    # hyperparameters are fixed, q(u) is not
    assert all(p.requires_grad for p in gp.variational_parameters())
    assert not any(p.requires_grad for p in likelihood.parameters())
    metrics = experiment.evaluate(gp, likelihood, data)
    assert 20 < metrics["rmse"] < data.y_std * 1.05 and math.isfinite(metrics["nll"])


def test_eubo_at_lam_zero_reaches_the_exact_retrained_q(trained):
    data, gp, likelihood, _ = trained
    erased = experiment.erasures(data, fraction=0.05)["random"]
    keep = torch.ones(data.num_train, dtype=torch.bool)
    keep[erased] = False
    optimum = experiment.optimal_q(gp, likelihood, data.x_train[keep], data.y_train[keep])
    full = experiment.kl_to(gp, optimum)
    model, info = experiment.unlearn(
        gp,
        likelihood,
        freeze_inducing(gp),
        data.x_train[erased],
        data.y_train[erased],
        "eubo",
        0.0,
        batch_size=1024,
        ngd_lr=1.0,
        steps=600,
        window=20,
        seed=0,
        progress=False,
    )
    # all of D_e fits one batch, and NGD at lr 1 lands on q(u|D)/p̃(D_e|u) = the D_r optimum
    assert info["converged"] and info["failed"] is None
    # the EUBO's diagnostics() report no ESS nor temperature: the run's record says so
    assert math.isnan(info["ess"]) and math.isnan(info["temperature"])
    assert info["annealing_steps"] is None
    assert experiment.kl_to(model, optimum) < 1e-3 * full
    assert float(inducing_kl(model, gp)) > 0  # a copy moved, the original did not


def test_rkl_by_moments_reaches_the_exact_retrained_q(trained):
    """The rKL's default solver lands within Monte-Carlo error of the D_r optimum, annealed to
    β = 1; rkl_solver="ngd" keeps the NGD route and an unknown solver is refused."""
    data, gp, likelihood, _ = trained
    erased = experiment.erasures(data, fraction=0.05)["random"]
    keep = torch.ones(data.num_train, dtype=torch.bool)
    keep[erased] = False
    optimum = experiment.optimal_q(gp, likelihood, data.x_train[keep], data.y_train[keep])
    full = experiment.kl_to(gp, optimum)
    options = dict(batch_size=1024, ngd_lr=0.1, window=20, seed=0, progress=False)
    args = (gp, likelihood, freeze_inducing(gp), data.x_train[erased], data.y_train[erased])
    model, info = experiment.unlearn(*args, "rkl", 0.0, steps=1000, **options)
    assert info["converged"] and info["failed"] is None and info["solver"] == "moments"
    assert info["temperature"] == 1.0 and info["annealing_steps"] is not None
    assert experiment.kl_to(model, optimum) < 0.2 * full, (experiment.kl_to(model, optimum), full)
    _, info = experiment.unlearn(*args, "rkl", 0.0, steps=3, rkl_solver="ngd", **options)
    assert info["steps"] == 3 and "solver" not in info
    with pytest.raises(ValueError, match="rkl_solver"):
        experiment.unlearn(*args, "rkl", 0.0, steps=3, rkl_solver="adam", **options)


def test_unlearn_rejects_an_unknown_method(trained):
    data, gp, likelihood, _ = trained
    x_e, y_e = data.x_train[:10], data.y_train[:10]
    with pytest.raises(ValueError, match="method must be 'eubo' or 'rkl', got 'kl'"):
        experiment.unlearn(
            gp,
            likelihood,
            freeze_inducing(gp),
            x_e,
            y_e,
            "kl",
            0.0,
            batch_size=8,
            ngd_lr=0.1,
            steps=1,
            window=1,
            seed=0,
            progress=False,
        )


def test_prior_q_is_the_prior_and_erasures_are_disjoint_sets_of_rows(trained):
    data, gp, _, _ = trained
    fresh = experiment.prior_q(gp)
    q = inducing_distribution(fresh)
    assert torch.equal(q.mean, torch.zeros_like(q.mean))
    assert torch.allclose(q.covariance_matrix, torch.eye(len(q.mean)))
    chosen = experiment.erasures(data, fraction=0.05, carrier="WN")
    assert len(chosen["random"]) == round(0.05 * data.num_train)
    wn = chosen["carrier:WN"]
    assert (data.carrier[wn] == data.carriers.index("WN")).all() and len(wn) > 0


def test_the_convergence_window_is_an_epoch_of_the_loops_own_data():
    assert experiment.epoch_window(246_468, 1024, 20) == 241
    assert experiment.epoch_window(12_323, 1024, 20) == 20
    assert experiment.epoch_window(100, 1024, 5) == 5


def test_per_example_nll_is_the_test_nll_and_feeds_the_attack(trained):
    data, gp, likelihood, _ = trained
    nll, log_var = experiment.per_example_nll(
        gp, likelihood, data.x_test, data.y_test, chunk_size=128
    )
    assert nll.shape == log_var.shape == data.y_test.shape
    # its mean, in minutes, is evaluate()'s test NLL
    expected = experiment.evaluate(gp, likelihood, data)["nll"]
    assert float(nll.mean()) + math.log(data.y_std) == pytest.approx(expected, rel=1e-4)
    with torch.no_grad():
        gp.eval(), likelihood.eval()
        pred = likelihood(gp(data.x_test[:5]))
        gp.train(), likelihood.train()
    direct = -torch.distributions.Normal(pred.mean, pred.variance.sqrt()).log_prob(data.y_test[:5])
    assert torch.allclose(nll[:5], direct, atol=1e-4)
    # members = training rows, non-members = test rows: the attack's loss AUC is the
    # Mann–Whitney statistic of the two NLL samples
    members = torch.arange(0, data.num_train, 10)
    x_e, y_e = data.x_train[members], data.y_train[members]
    columns = experiment.mia(gp, likelihood, x_e, y_e, data, repeats=1)
    nll_e, _ = experiment.per_example_nll(gp, likelihood, x_e, y_e)
    pairs = nll.unsqueeze(0) - nll_e.unsqueeze(1)
    mann_whitney = float((pairs > 0).double().mean() + 0.5 * (pairs == 0).double().mean())
    assert columns["mia_auc"] == pytest.approx(mann_whitney, abs=1e-9)
    # 20 inducing points on 3600 flights memorise nothing: near chance
    assert abs(columns["mia_accuracy"] - 0.5) < 0.1 and abs(columns["mia_auc"] - 0.5) < 0.1


def test_a_monitor_records_a_curve_and_stops_the_loop_at_the_target(trained):
    """fit_q's monitor sees q(u) every ``every`` steps and stops the loop (not converged) the
    first time it returns True: a q(u) retrained from the prior reaches a KL to the exact
    optimum that it did not have at the start, and stops there."""
    data, gp, likelihood, _ = trained
    x, y = data.x_train[:2000], data.y_train[:2000]
    optimum = experiment.optimal_q(gp, likelihood, x, y)
    fresh = experiment.prior_q(gp)
    start = experiment.kl_to(fresh, optimum)
    target, curve = 0.3 * start, []

    def monitor(model, fixed) -> bool:
        assert fixed is likelihood
        curve.append(experiment.kl_to(model, optimum))
        return curve[-1] <= target

    options = dict(batch_size=256, ngd_lr=0.1, window=20, seed=0, desc="", progress=False)
    info = experiment.fit_q(fresh, likelihood, x, y, steps=2000, monitor=(monitor, 5), **options)
    assert curve[-1] <= target < min(curve[:-1], default=math.inf)
    assert info["steps"] == 5 * len(curve) and not info["converged"]
    never = experiment.fit_q(
        experiment.prior_q(gp),
        likelihood,
        x,
        y,
        steps=40,
        monitor=(lambda m, _: False, 10),
        **options,
    )
    assert never["steps"] == 40
