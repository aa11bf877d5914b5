"""The sine study (EXPERIMENTS.md §8): its network, Laplace fits, predictives and L-BUN finding."""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from torch.func import hessian, jacrev

import pyro_unlearn as pu
from pyro_unlearn.experiments import TRUST_COLUMNS
from pyro_unlearn.experiments import sine as study
from pyro_unlearn.experiments.datasets import sine

F64 = torch.float64


@pytest.fixture
def small():
    data = sine(num_data=40, num_erased=20, seed=1, dtype=F64)
    return data, study.SineNet(hidden=4).to(F64)


def flat_network(net, data):
    """θ ↦ f_θ(x) in the AutoDiagonalNormal layout (w1, b1, w2, b2), written out by hand."""
    H = net.hidden

    def f(theta, x=data.x):
        w1, b1 = theta[:H].reshape(H, 1), theta[H : 2 * H]
        w2, b2 = theta[2 * H : 3 * H], theta[3 * H]
        return torch.tanh(x @ w1.T + b1) @ w2 + b2

    return f


def test_sine_data_is_two_clusters_around_the_erased_block():
    data = sine()
    x = data.x[:, 0]
    assert bool((x[1:] >= x[:-1]).all()) and len(data.erased) == 200
    lo, hi = data.gap
    remaining = x[data.remaining]
    assert int((remaining < lo).sum()) == 50 and int((remaining > hi).sum()) == 50
    with pytest.raises(ValueError, match="even number of remaining"):
        sine(num_data=300, num_erased=199)


def test_net_broadcasts_over_particle_batches(small):
    """Under a particle plate (latents (S, 1, ...)) the network equals S separate passes."""
    data, net = small
    with torch.no_grad(), pyro.plate("particles", 5, dim=-2):
        trace = pyro.poutine.trace(net).get_trace(data.x)
    f = trace.nodes["_RETURN"]["value"]
    assert f.shape == (5, 40)
    by_hand = flat_network(net, data)
    for s in range(5):
        theta = torch.cat(
            [trace.nodes[k]["value"][s].reshape(-1) for k in ("w1", "b1", "w2", "b2")]
        )
        torch.testing.assert_close(f[s], by_hand(theta))


@pytest.mark.parametrize("curvature", ["diag", "ggn_diag"])
def test_laplace_precision_is_prior_plus_the_datas_curvature_at_the_map(small, curvature):
    data, net = small
    guide = study.laplace_posterior(net, data.x, data.y, curvature, steps=300)
    theta, f = guide.loc, flat_network(net, data)

    def nll(t):
        return 0.5 * ((data.y - f(t)) / net.noise_scale).square().sum()

    grad = jacrev(lambda t: nll(t) + 0.5 * t.square().sum())(theta)
    assert float(grad.abs().max()) < 1e-2  # near a stationary point of the log joint
    if curvature == "diag":
        expected = 1.0 + hessian(nll)(theta).diagonal()
    else:
        expected = 1.0 + (jacrev(f)(theta) / net.noise_scale).square().sum(0)
    torch.testing.assert_close(guide.scale**-2, expected, rtol=1e-8, atol=1e-8)


def test_linearized_predictive_is_the_glm_one(small):
    data, net = small
    guide = study.laplace_posterior(net, data.x, data.y, "ggn_diag", steps=300)
    mean, var = study.linearized_moments(net, guide, data.x_test)
    f = flat_network(net, data)
    J = jacrev(lambda t: f(t, data.x_test))(guide.loc)
    torch.testing.assert_close(mean, f(guide.loc, data.x_test))
    torch.testing.assert_close(var, (J * guide.scale).square().sum(-1) + 0.01)


def test_monte_carlo_predictive_matches_the_linearized_one_for_a_narrow_posterior(small):
    data, net = small
    guide = study.laplace_posterior(net, data.x, data.y, "ggn_diag", steps=300)
    guide.scale.mul_(0.01)  # a buffer: the linearisation is exact as q narrows
    mc_mean, mc_var = study.predictive_moments(net, guide, data.x_test, num_samples=4000)
    mean, var = study.linearized_moments(net, guide, data.x_test)
    torch.testing.assert_close(mc_mean, mean, rtol=0, atol=1e-3)
    torch.testing.assert_close(mc_var, var, rtol=2e-2, atol=0)


def test_laplace_posterior_rejects_unknown_curvature(small):
    data, net = small
    with pytest.raises(ValueError, match="'diag' or 'ggn_diag'"):
        study.laplace_posterior(net, data.x, data.y, "full")


def test_lbun_moves_the_predictive_toward_the_retrained_one_in_the_gap():
    """The issue's acceptance, on the paper's setting (300 points, 200 central erased, 151
    weights): diagonal and GGN L-BUN lower the predictive KL to the retrained Laplace posterior
    in the deleted region below the full posterior's; the exact division (λ_L = 1) has no
    Laplace approximation here, and the study records the error instead of a number."""
    results = study.run(
        curvatures=("diag", "ggn_diag"), laplace_lambdas=(100.0, 1.0), vi=False,
        map_steps=500, lbun_steps=100, progress=False,
    )  # fmt: skip
    rows = {(r["scheme"], r["method"], r["lam"]): r for r in results["rows"]}
    for scheme in ("laplace-diag", "laplace-ggn_diag"):
        full = next(r for r in results["rows"] if r["scheme"] == scheme and r["method"] == "full")
        lbun = rows[scheme, "lbun", 100.0]
        assert lbun["failed"] is None and not lbun["repaired"]
        assert lbun["kl_gap"] < 0.75 * full["kl_gap"], (lbun["kl_gap"], full["kl_gap"])
        exact = rows[scheme, "lbun", 1.0]
        assert "no maximum" in exact["failed"] or "not positive definite" in exact["failed"]
        # the trust check judges every L-BUN posterior; a clipped stand-in for the failed
        # division (repaired) is never better than "retrain", and no posterior was diagnosed
        # where no run succeeded
        assert lbun["verdict"] in pu.trust.VERDICTS and "pareto_k" in lbun  # None: k̂ = ∞
        assert exact["verdict"] == ("retrain" if exact["repaired"] else None)
        assert full["verdict"] is None and full["pareto_k"] is None  # JSON-safe NaN
        assert (
            f"{scheme}/lbun/100" in results["curves"] and f"{scheme}/retrained" in results["curves"]
        )


def test_vi_branch_records_every_method_and_lambda():
    results = study.run(
        curvatures=("ggn_diag",), laplace_lambdas=(100.0,), vi_lambdas=(0.0,), map_steps=200,
        vi_steps=20, unlearn_steps=5, num_particles=4, rkl_particles=8, num_samples=50,
        progress=False,
    )  # fmt: skip
    vi = [(r["method"], r["lam"]) for r in results["rows"] if r["scheme"] == "vi"]
    assert [m for m, _ in vi] == ["retrained", "full", "eubo", "rkl"]
    full = next(r for r in results["rows"] if r["scheme"] == "vi" and r["method"] == "full")
    assert math.isfinite(full["kl_gap"])
    for row in results["rows"]:  # membership inference on D_e, for every posterior
        assert math.isfinite(row["mia_accuracy"]) and math.isfinite(row["mia_auc"])
    assert len(results["curves"]["vi/rkl/0"]["mean"]) == len(results["data"]["grid"])
    for row in results["rows"]:  # the trust check's columns: the unlearned rows judged
        judged = row["method"] in ("lbun", "eubo", "rkl")
        assert set(TRUST_COLUMNS) <= set(row)
        assert (row["verdict"] in pu.trust.VERDICTS) if judged else row["verdict"] is None
    fig = study.plot_predictives(results, "vi")
    assert len(fig.axes) == 3  # full, eubo, rkl


def test_lbun_on_a_300k_weight_sine_network_never_forms_a_dense_hessian():
    """GGN-diagonal L-BUN on a 300 000-weight sine network (a dense Hessian: 360 GB)."""
    data = sine(num_data=40, num_erased=20)
    net = study.SineNet(hidden=100_000)
    guide = study.laplace_posterior(net, data.x, data.y, "ggn_diag", steps=5)
    assert guide.loc.numel() == 300_001
    with warnings.catch_warnings():  # 5 L-BFGS steps may stop short of θ*: not tested here
        warnings.simplefilter("ignore", UserWarning)
        result = pu.laplace_unlearn(  # a large λ_L keeps θ* at μ_D, where Λ_D ⪰ H_e
            net, guide, data.x, data.y, erased=data.erased, plate="data", retention=1e6,
            curvature="ggn_diag", steps=5, diagnose=False,  # 1000 draws of 300k weights: 16 GB
        )  # fmt: skip
    assert result.precision.shape == (300_001,) and bool((result.precision > 0).all())
