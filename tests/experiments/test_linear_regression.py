"""The linear-regression experiment (pyro_unlearn/experiments/linear_regression.py): Appendix C's
data, the closed-form λ = 0 optima of each loss over independent Gaussians, a short run with the
diagonal guide, the predictive-sample figure and the deletability criterion of
tutorials/pathological.ipynb. The full-covariance path is exercised by
tests/test_cli.py and the full run by tutorials/linear_regression.ipynb."""

import math

import matplotlib
import matplotlib.pyplot as plt
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import NotNormalizableError
from pyro_unlearn.experiments import linear_regression as experiment
from pyro_unlearn.metrics import gaussian_kl

matplotlib.use("Agg")
F64 = torch.float64


@pytest.fixture(scope="module")
def data():
    return experiment.clustered_line(dtype=F64, device=torch.get_default_device())


def _mean_field(loc, cov):
    """The ELBO's optimum over independent Gaussians for a Gaussian posterior: its mean, and
    precisions the diagonal of its precision."""
    return loc, torch.diag(1.0 / torch.linalg.inv(cov).diagonal())


def test_clustered_line_is_reproducible_and_clustered(data):
    again = experiment.clustered_line(dtype=F64, device=torch.get_default_device())
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)
    assert data.x.shape == (40, 1) and data.y.dtype == F64
    assert data.erased.tolist() == list(range(10))
    x_e, x_r = data.x[data.erased, 0], data.x[data.remaining, 0]
    assert float(x_r.min()) >= -3.0 and float(x_r.max()) <= 1.0
    assert float(x_e.min()) > float(x_r.max())  # the cluster lies beyond D_r
    # D_e sits `offset` = 1 above the line y = x + 0.5 (noise 0.5, averaged over 10 points)
    residual = data.y[data.erased] - (x_e + 0.5)
    assert 0.6 < float(residual.mean()) < 1.4
    other = experiment.clustered_line(dtype=F64, seed=1)
    assert not torch.equal(other.x.cpu(), data.x.cpu())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_erased": 0}, "at least one remaining and one erased"),
        ({"remaining_range": (1.0, -3.0)}, "low < high"),
        ({"noise_scale": 0.0}, "noise_scale must be positive"),
    ],
)
def test_clustered_line_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        experiment.clustered_line(**kwargs)


def test_exact_posterior_is_bayes_rule_on_the_features(data):
    loc, cov = experiment.exact_posterior(data.x, data.y, data.noise_scale)
    features = torch.cat([data.x, torch.ones_like(data.x)], -1)
    precision = features.T @ features / 0.25 + torch.eye(2, dtype=F64) / 100
    assert torch.allclose(torch.linalg.inv(cov), precision)
    assert torch.allclose(loc, torch.linalg.solve(precision, features.T @ data.y / 0.25))


def _minimise(kl, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin over independent Gaussians N(m, diag(exp 2s)) of kl(m, cov), by L-BFGS."""
    params = torch.zeros(2 * dim, dtype=F64, device="cpu", requires_grad=True)
    optim = torch.optim.LBFGS(
        [params], max_iter=500, tolerance_grad=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        optim.zero_grad()
        value = kl(params[:dim], torch.diag(torch.exp(2 * params[dim:])))
        value.backward()
        return value

    optim.step(closure)
    m, s = params.detach()[:dim], params.detach()[dim:]
    return m, torch.diag(torch.exp(2 * s))


def test_closed_form_optima_minimise_each_loss_over_independent_gaussians(data):
    # q(θ|D) the exact posterior (full covariance): p̃ is then the exact p(θ|D_r)
    loc, cov = experiment.exact_posterior(data.x, data.y, data.noise_scale)
    features = torch.cat([data.x, torch.ones_like(data.x)], -1).cpu()
    loc, cov, e = loc.cpu(), cov.cpu(), data.erased.cpu()
    optima = experiment.closed_form_optima(
        loc, cov, features[e], data.y.cpu()[e], data.noise_scale, family="diagonal"
    )
    target = optima["target"]
    r = data.remaining.cpu()
    exact_r = experiment.exact_posterior(data.x.cpu()[r], data.y.cpu()[r], data.noise_scale)
    assert torch.allclose(target[0], exact_r[0]) and torch.allclose(target[1], exact_r[1])
    # EUBO: argmin KL(q ‖ p̃); reverse KL: argmin KL(p̃ ‖ q), both over diagonal Gaussians
    eubo = _minimise(lambda m, c: gaussian_kl(m, c, *target), 2)
    rkl = _minimise(lambda m, c: gaussian_kl(*target, m, c), 2)
    for found, closed in ((eubo, optima["eubo"]), (rkl, optima["rkl"])):
        assert torch.allclose(found[0], closed[0], atol=1e-6)
        assert torch.allclose(found[1], closed[1], rtol=1e-4)
    # the EUBO's marginals are narrower than the target's, the reverse KL's match them
    assert bool((optima["eubo"][1].diagonal() < target[1].diagonal()).all())
    full = experiment.closed_form_optima(loc, cov, features[e], data.y.cpu()[e], 0.5)
    for name in ("eubo", "rkl"):
        assert torch.equal(full[name][1], full["target"][1])


def test_mean_field_target_keeps_the_precision_but_not_the_mean_of_retraining(data):
    # q(θ|D) the mean-field optimum on D: dividing out D_e gives the mean-field precision on
    # D_r exactly (diag Λ_D − diag X_eᵀX_e/σ²) — but a biased mean, so even the best diagonal
    # Gaussian differs from retraining
    x, y, e, r = data.x.cpu(), data.y.cpu(), data.erased.cpu(), data.remaining.cpu()
    q = _mean_field(*experiment.exact_posterior(x, y, data.noise_scale))
    retrained = _mean_field(*experiment.exact_posterior(x[r], y[r], data.noise_scale))
    features = torch.cat([x, torch.ones_like(x)], -1)
    optima = experiment.closed_form_optima(
        *q, features[e], y[e], data.noise_scale, family="diagonal"
    )
    assert torch.allclose(optima["eubo"][1], retrained[1])
    assert float((optima["eubo"][0] - retrained[0]).abs().max()) > 0.05
    assert float(gaussian_kl(*optima["eubo"], *retrained)) > 0.5


def test_closed_form_optima_report_a_non_normalisable_division(data):
    # a q(θ|D) only 20% too wide (as from stopping its training early) has too little
    # precision to give up D_e's
    x, y, e = data.x.cpu(), data.y.cpu(), data.erased.cpu()
    loc, cov = _mean_field(*experiment.exact_posterior(x, y, data.noise_scale))
    features = torch.cat([x, torch.ones_like(x)], -1)
    with pytest.raises(NotNormalizableError, match="not positive definite"):
        experiment.closed_form_optima(loc, 1.44 * cov, features[e], y[e], 0.5, "diagonal")
    with pytest.raises(ValueError, match="family must be one of"):
        experiment.closed_form_optima(loc, cov, features[e], y[e], 0.5, "lowrank")


def test_run_with_the_diagonal_guide_unlearns_towards_retraining(data):
    results = experiment.run(
        (0.0,),
        data=data,
        guide="diagonal",
        train_steps=500,
        unlearn_steps=200,
        num_particles=256,
        train_lr=0.1,
        lr=0.05,
        progress=False,
    )
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"full", "eubo", "rkl"}
    # membership inference on D_e for every posterior, the retrained one included
    for columns in [*rows.values(), results["mia"]["retrained"]]:
        assert math.isfinite(columns["mia_accuracy"]) and math.isfinite(columns["mia_auc"])
    # both move towards the retrained posterior at λ = 0, on θ and on the predictive over D_e
    for method in ("eubo", "rkl"):
        assert rows[method]["kl_retrained"] < rows["full"]["kl_retrained"]
        assert rows[method]["kl_erased_mean"] < rows["full"]["kl_erased_mean"]
    # q(θ|D) and the reference are at their ELBO optima; the EUBO at its closed-form optimum
    assert results["diagnostics"]["kl_full_to_elbo_optimum"] < 0.02
    assert results["diagnostics"]["kl_retrained_to_elbo_optimum"] < 0.02
    assert rows["eubo"]["kl_target"] == pytest.approx(
        results["optima"]["eubo"]["kl_target"], abs=0.05
    )
    # the trust check, blind to D_r and to the closed form: every unlearned row is judged
    assert rows["full"]["verdict"] is None and math.isnan(rows["full"]["pareto_k"])
    for method in ("eubo", "rkl"):
        assert rows[method]["verdict"] in pu.trust.VERDICTS
    # its KL estimate finds the size of the exact KL(q_u ‖ p̃) of the EUBO (0.36 nats), low by
    # ~30 %: the mean-field q_u is narrower than the correlated p̃, so PSIS misses p̃'s tails
    assert 0.4 < rows["eubo"]["kl_to_target"] / rows["eubo"]["kl_target"] < 1.2
    # the rKL's diagonal q_u is far from p̃ (over half of q(θ|D)'s KL to it): never trusted
    assert rows["rkl"]["kl_target"] > 0.5 * rows["full"]["kl_target"]
    assert rows["rkl"]["verdict"] != "trusted" and rows["rkl"]["pareto_k"] > 0.7
    # no independent Gaussian gets closer to the exact p(θ|D_r) than its mean-field
    # projection (the mean, precisions diag Λ_r): a floor that every posterior respects
    r = data.remaining
    exact_r = experiment.exact_posterior(data.x[r], data.y[r], data.noise_scale)
    floor = float(gaussian_kl(*_mean_field(*exact_r), *exact_r))
    assert floor > 0.3
    for value in [row["kl_exact"] for row in rows.values()] + [
        results["optima"]["eubo"]["kl_exact"]
    ]:
        assert value >= floor - 1e-6
    assert results["target_not_normalizable"] is None
    assert {"full", "retrained", "exact", "target", "eubo λ=0", "rkl λ=0"} <= set(
        results["posteriors"]
    )
    assert len(results["loss_traces"]["eubo λ=0"]) == 50
    assert results["settings"]["guide"] == "diagonal"


def test_run_rejects_an_unknown_guide_and_bad_data(data):
    with pytest.raises(ValueError, match="guide must be one of"):
        experiment.run(guide="lowrank", data=data, progress=False)
    bad = data._replace(y=data.y[:-1])
    with pytest.raises(ValueError, match=r"data.x must be \(N, D\)"):
        experiment.run(guide="diagonal", data=bad, progress=False)


def test_predictive_lines_draw_regression_functions(data):
    grid = torch.linspace(-3, 4, 7, dtype=F64)
    point = (torch.tensor([2.0, -1.0], dtype=F64), 1e-14 * torch.eye(2, dtype=F64))
    lines = experiment.predictive_lines(point, grid, num_samples=5)
    assert lines.shape == (5, 7) and lines.dtype == F64
    assert torch.allclose(lines, (2 * grid - 1).expand(5, 7), atol=1e-5)
    # f(x) = w x + b has variance [x, 1] Σ [x, 1]ᵀ under θ ~ N(m, Σ)
    cov = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
    many = experiment.predictive_lines({"loc": point[0], "cov": cov}, grid, 20000, seed=1)
    features = torch.stack([grid, torch.ones_like(grid)], -1)
    assert torch.allclose(many.var(0), (features @ cov * features).sum(-1), rtol=0.05)
    again = experiment.predictive_lines({"loc": point[0], "cov": cov}, grid, 20000, seed=1)
    other = experiment.predictive_lines({"loc": point[0], "cov": cov}, grid, 20000, seed=2)
    assert torch.equal(again, many) and not torch.equal(other, many)


def test_predictive_lines_read_a_trained_guide(data):
    def model(x, y=None):
        return experiment.linear_model(x, y, data.noise_scale)

    guide = AutoDiagonalNormal(model)
    guide(data.x, data.y)
    lines = experiment.predictive_lines(guide, data.x, num_samples=4)
    assert lines.shape == (4, 40)
    assert pyro.get_param_store().keys() == {"AutoDiagonalNormal.loc", "AutoDiagonalNormal.scale"}


@pytest.mark.parametrize(
    "posterior, x, message",
    [
        ((torch.zeros(3), torch.eye(3)), torch.zeros(4, 1), "of size 2"),
        ((torch.zeros(2), -torch.eye(2)), torch.zeros(4), "not positive definite"),
        ({"loc": torch.zeros(2)}, torch.zeros(4), "needs 'loc' and 'cov'"),
        ((torch.zeros(2), torch.eye(2)), torch.zeros(2, 2, 1), r"x must be \(G, D\)"),
    ],
)
def test_predictive_lines_reject_bad_input(posterior, x, message):
    with pytest.raises(ValueError, match=message):
        experiment.predictive_lines(posterior, x)


def test_plot_predictive_samples_draws_a_panel_per_posterior(data):
    posteriors = {
        "a": (torch.tensor([1.0, 0.5]), 0.01 * torch.eye(2)),
        "b": {"loc": [0.0, 0.0], "cov": [[0.01, 0.0], [0.0, 0.01]]},
    }
    fig = experiment.plot_predictive_samples(data, posteriors, num_samples=6, columns=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["data", "a", "b", ""]  # the fourth panel is switched off
    assert not fig.axes[3].axison
    # 6 sampled lines plus the D_r dots and the D_e crosses; the data panel has only the data
    assert len(fig.axes[1].lines) == 8 and len(fig.axes[0].lines) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="posteriors is empty"):
        experiment.plot_predictive_samples(data, {})
    flat = data._replace(x=torch.cat([data.x, data.x], -1))
    with pytest.raises(ValueError, match="needs 1-D inputs"):
        experiment.plot_predictive_samples(flat, posteriors)


def test_an_unobserved_point_divides_out_only_where_the_posterior_knows_f_better_than_sigma(data):
    # pathological.ipynb's criterion: Λ_D − σ⁻² φφᵀ is positive definite iff
    # Var_{p(θ|D)}[w x_u + b] = φᵀ Λ_D⁻¹ φ < σ² (whatever y_u is)
    x, y = data.x.cpu(), data.y.cpu()
    loc, cov = experiment.exact_posterior(x, y, data.noise_scale)
    precision = torch.linalg.inv(cov)
    sigma2 = data.noise_scale**2
    checked = {"normalisable": 0, "not": 0}
    for x_u in torch.linspace(-40.0, 40.0, 81, dtype=F64):
        phi = torch.stack([x_u, torch.ones_like(x_u)]).unsqueeze(0)
        variance = float(phi @ cov @ phi.T)
        if abs(variance - sigma2) < 0.01 * sigma2:
            continue
        args = (loc, precision, phi, torch.tensor([5.0], dtype=F64), data.noise_scale)
        if variance < sigma2:
            pu.exact.gaussian_linear_unlearn(*args)
            checked["normalisable"] += 1
        else:
            with pytest.raises(NotNormalizableError, match="not positive definite"):
                pu.exact.gaussian_linear_unlearn(*args)
            checked["not"] += 1
    assert checked["normalisable"] > 5 and checked["not"] > 5
