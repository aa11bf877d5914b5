"""The moons experiment (pyro_unlearn/experiments/moons/): its model, the exact Gaussian VI
that fits q(u|D), and a short run of the whole protocol against the paper's findings; the CLI
is exercised by tests/test_cli.py and the full run by tutorials/moons.ipynb."""

import json
import math

import gpytorch
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.experiments import datasets
from pyro_unlearn.experiments import moons as experiment
from pyro_unlearn.guides import read_gaussian, write_gaussian


@pytest.fixture(scope="module")
def data():
    return datasets.moons()


@pytest.fixture(scope="module")
def model(data):
    return experiment.SparseGPClassifier(data.inducing)


def test_the_authors_kernel_needs_no_jitter(model, data):
    assert model.jitter == 0.0
    k_uu = experiment.kernel(data.inducing, data.inducing)
    assert torch.allclose(model.scale_tril @ model.scale_tril.mT, k_uu)
    assert torch.allclose(k_uu.diagonal(), torch.full((20,), 4.7432, dtype=k_uu.dtype))
    # ℓ multiplies the squared distance along each input
    k = experiment.kernel(data.x.new_zeros(1, 2), data.x.new_tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(k, 4.7432 * torch.tensor([[-2.4232 / 2, -1.8230 / 2]]).exp().double())


def test_the_logits_interpolate_the_inducing_values(model, data):
    u = torch.randn(20, dtype=data.x.dtype)
    logits = (model.projection(data.inducing) * u).sum(-1)  # f(X_u) = K_uu K_uu⁻¹ u = u
    assert torch.allclose(logits, u, atol=1e-6)


def test_model_vectorises_over_particles(model, data):
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(model).get_trace(data.x, data.y)
    trace.compute_log_prob()
    assert trace.nodes["u"]["value"].shape == (7, 1, 20)
    assert trace.nodes["y"]["log_prob"].shape == (7, 100)
    # particle 3 alone gives the same likelihood
    u3 = trace.nodes["u"]["value"][3, 0]
    single = poutine.trace(poutine.condition(model, {"u": u3})).get_trace(data.x, data.y)
    single.compute_log_prob()
    assert torch.allclose(single.nodes["y"]["log_prob"], trace.nodes["y"]["log_prob"][3])


def test_q_u_given_d_is_the_elbo_optimum(model, data):
    guide, info = experiment.train_full_posterior(model, data.x, data.y, check_particles=20000)
    assert info["converged"] and info["max_abs_gradient"] < 1e-6
    # Pyro's own Monte-Carlo ELBO at the optimum agrees with the quadrature's
    assert info["mc_negative_elbo"] == pytest.approx(info["negative_elbo"], abs=0.05)
    # and no Gaussian nearby does better: moving the mean or shrinking the covariance
    loc, cov = (t.clone() for t in read_gaussian(guide))
    elbo = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    for shift, scale in ((0.3, 1.0), (0.0, 0.7)):
        write_gaussian(guide, loc + shift * cov.diagonal().sqrt(), scale * cov)
        with torch.no_grad():
            assert elbo.loss(model, guide, data.x, data.y) > info["negative_elbo"] + 0.1
    # and L-BFGS from elsewhere (shifted mean, the prior's covariance) finds the same optimum
    loc2, cov2, _ = experiment.gaussian_vi(model, data.x, data.y, loc + 1.0, None)
    assert pu.metrics.gaussian_kl(loc2, cov2, loc, cov) < 1e-8


def test_entropy_reduction_of_an_informative_erasure(model, data):
    # erasing data can only widen an exact posterior: H[q(u|D_r)] − H[q(u|D)] > 0, and more so
    # for the sorted erasure (19 of one class, all at one end) than for a random one
    def reduction(d):
        loc, cov, _ = experiment.gaussian_vi(model, d.x, d.y)
        r = d.remaining
        _, cov_r, _ = experiment.gaussian_vi(model, d.x[r], d.y[r])
        return experiment.gaussian_entropy(cov_r) - experiment.gaussian_entropy(cov)

    sorted_, random = reduction(data), reduction(datasets.moons("random"))
    assert sorted_ > random > 0
    assert sorted_ > 0.5


@pytest.fixture
def quick_run(moons_quick_run):
    return moons_quick_run


def test_quick_run_reproduces_the_papers_finding(quick_run):
    rows = {(r["method"], r["lam"]): r for r in quick_run["rows"]}
    full, rkl, eubo = rows[("full", 1.0)], rows[("rkl", 0.0)], rows[("eubo", 0.0)]
    floor = quick_run["noise_floor"]["mvn"]
    # q(u|D) is far from the retrained posterior on D_e, well above the Monte-Carlo noise
    assert full["kl_erased_mean"] > 0.2 > 100 * floor["kl_erased_mean"]
    # rKL at λ = 0 unlearns: far below full on D_e, and leaves D_r where it was (both KLs on
    # D_r are ~1e-3 in the quick run, and their order moves with the random stream)
    assert rkl["kl_erased_mean"] < 0.4 * full["kl_erased_mean"]
    assert rkl["kl_remaining_mean"] < 3 * full["kl_remaining_mean"]
    # the EUBO at λ = 0 unlearns catastrophically: worse than no unlearning, far worse than rKL
    assert eubo["kl_erased_mean"] > 2 * full["kl_erased_mean"]
    assert eubo["kl_erased_mean"] > 10 * rkl["kl_erased_mean"]
    assert eubo["kl_remaining_mean"] > 10 * rkl["kl_remaining_mean"]
    assert 0 < rows[("rkl", 1e-9)]["ess"] < 256  # importance weights degenerate at small λ
    # the erasure is informative: the reference's entropy grew, as the exact optima's did
    assert quick_run["entropy_reduction"]["mvn"] > 0.5
    assert quick_run["entropy_reduction_exact"]["mvn"] > 0.5


def test_quick_run_rows_carry_the_trust_verdict(quick_run):
    # every row says how far to trust it, judged without D_r (full: nothing unlearned, None)
    for row in quick_run["rows"]:
        assert row["verdict"] in {*pu.trust.VERDICTS, None} and "pareto_k" in row
        assert (row["verdict"] is None) == (row["method"] == "full")
    assert quick_run["settings"]["diagnose_samples"] == experiment.QUICK["diagnose_samples"]
    rows = {(r["method"], r["lam"]): r for r in quick_run["rows"]}
    full, eubo = rows[("full", 1.0)], rows[("eubo", 0.0)]
    # the EUBO at λ = 0 is the catastrophe of the paper (worse than no unlearning on D_e): the
    # check, blind to D_r, must not vouch for it
    assert eubo["kl_erased_mean"] > 2 * full["kl_erased_mean"]
    assert eubo["verdict"] != "trusted"


def test_quick_run_shape_and_figures(quick_run, data):
    assert quick_run["scenario"] == "sorted"
    assert quick_run["settings"]["num_erased_class_1"] == 19
    assert {r["scenario"] for r in quick_run["rows"]} == {"sorted"}
    posteriors = quick_run["posteriors"]["mvn"]
    assert {"full", "retrained", "eubo λ=0", "rkl λ=1e-09"} <= set(posteriors)
    model = quick_run["model"]["mvn"]
    grid = torch.tensor([[2.0, -0.5], [-1.0, 0.5]], dtype=data.x.dtype)
    full = experiment.predictive_surface(model, posteriors["full"], grid, num_samples=2000)
    retrained = experiment.predictive_surface(model, posteriors["retrained"], grid, 2000)
    # at the erased end (x0 = 2, class 1) forgetting lowers p(y=1|x); far from it, no change
    assert full[0] > 0.85 and retrained[0] < full[0] - 0.2
    assert abs(float(full[1] - retrained[1])) < 0.05
    fig = experiment.plot_surfaces(model, posteriors, data, resolution=20, num_samples=50)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == list(posteriors)  # one panel each (the colour bar aside)
    fig = experiment.plot_data(datasets.moons("full"))
    assert fig.axes[0].get_title().startswith("moons, full erasure: 50 of 100")


def test_run_scenarios_merges_the_runs():
    tiny = dict(lambdas=(0.0,), retrain_steps=20, unlearn_steps=10, num_particles=16)
    results = experiment.run_scenarios(("random", "full"), progress=False, **tiny)
    assert [r["scenario"] for r in results["rows"]] == ["random"] * 3 + ["full"] * 3
    assert (
        set(results["retrain_seconds"]) == set(results["entropy_reduction"]) == {"random", "full"}
    )
    assert results["settings"]["scenario"] == ["random", "full"]
    full = results["scenarios"]["full"]
    assert full["settings"]["num_erased"] == 50 and full["settings"]["num_erased_class_1"] == 50
    # erasing a whole class narrows the posterior far more than 20 random points
    exact = {s: r["entropy_reduction_exact"]["mvn"] for s, r in results["scenarios"].items()}
    assert exact["full"] > 3 > 1 > exact["random"] > 0


# -- the GPyTorch variant -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def svgp_fit(data):
    pyro.clear_param_store()
    svgp = experiment.SVGPClassifier(data.inducing)
    guide, info = experiment.train_svgp_posterior(svgp, data.x, data.y, check_particles=2000)
    return svgp, guide, info


def test_svgp_has_the_authors_kernel_prior_and_whitening(svgp_fit, model, data):
    svgp, _, _ = svgp_fit
    k = svgp.gp.covar_module(data.inducing, data.x).to_dense()
    assert torch.allclose(k, experiment.kernel(data.inducing, data.x), rtol=0, atol=1e-12)
    assert svgp.jitter == 0.0 and svgp.gp.variational_strategy.jitter_val == 0.0
    # GPyTorch's whitening factor is the authors' prior's: u = f(X_u) = L v
    assert torch.allclose(svgp.scale_tril, model.scale_tril, rtol=0, atol=1e-12)
    assert not any(p.requires_grad for p in svgp.gp.hyperparameters())
    assert torch.allclose(svgp.projection(data.x), model.projection(data.x), atol=1e-10)
    # the conditional variance: zero at the inducing inputs, positive between them
    assert float(svgp.conditional_variance(data.inducing).max()) < 1e-10
    assert float(svgp.conditional_variance(data.x).max()) > 0.5


def test_svgp_q_u_given_d_is_gpytorchs_optimum_and_the_authors(svgp_fit, model, data):
    svgp, guide, info = svgp_fit
    # the exact optimum written into GPyTorch is where GPyTorch's own ELBO is stationary, and
    # its value is the quadrature's: GPyTorch's model is the one gaussian_vi solved
    assert info["converged"] and info["gpytorch_max_abs_gradient"] < 1e-5
    assert info["gpytorch_negative_elbo"] == pytest.approx(info["negative_elbo"], abs=1e-9)
    assert info["mc_negative_elbo"] == pytest.approx(info["negative_elbo"], abs=0.05)
    # moving q(v) off it lowers GPyTorch's ELBO
    gp, n = svgp.gp, len(data.y)
    elbo = gpytorch.mlls.VariationalELBO(svgp.likelihood, gp, num_data=n)
    q = gp.variational_strategy._variational_distribution
    optimum = q.variational_mean.detach().clone()
    with torch.no_grad():
        q.variational_mean.add_(0.1)
        assert -float(elbo(gp(data.x), data.y)) * n > info["negative_elbo"] + 0.01
        q.variational_mean.copy_(optimum)
    # the same q(u|D) as the authors' model (mapped to u = L v): close, not equal, the SVGP
    # keeping Var[f(x)|u], which the authors' logit drops; without it, the same optimum
    loc, cov = svgp.unwhitened(*experiment.svgp_moments(guide))
    plain_loc, plain_cov, _ = experiment.gaussian_vi(model, data.x, data.y)
    assert 1e-4 < float(pu.metrics.gaussian_kl(loc, cov, plain_loc, plain_cov)) < 1e-2

    class WithoutConditionalVariance:
        scale_tril = svgp.scale_tril
        projection = staticmethod(svgp.projection)

    loc0, cov0, _ = experiment.gaussian_vi(WithoutConditionalVariance(), data.x, data.y)
    assert float(pu.metrics.gaussian_kl(loc0, cov0, plain_loc, plain_cov)) < 1e-8


def test_svgp_predictive_is_gpytorchs(svgp_fit, data):
    # the Monte-Carlo mean of p(y=1|x, v) over q(v|D) is GPyTorch's E_{q(f)}[sigmoid f]
    svgp, guide, _ = svgp_fit
    probs = pu.metrics.predictive_distribution(
        svgp.predictive, guide, data.x, site="y", num_samples=4000
    ).probs
    with torch.no_grad():
        expected = svgp.likelihood(svgp.gp(data.x)).probs
    assert (probs - expected).abs().max() < 0.02  # 5 standard errors


@pytest.mark.parametrize("mean", [-3.0, 0.0, 2.0])
@pytest.mark.parametrize("var", [0.01, 1.0, 9.0])
def test_logistic_likelihood_against_dense_quadrature(mean, var):
    likelihood = experiment.LogisticBernoulliLikelihood().double()
    f = torch.linspace(-12, 12, 200001, dtype=torch.float64) * var**0.5 + mean
    density = torch.distributions.Normal(f.new_tensor(mean), var**0.5).log_prob(f).exp()
    step = float(f[1] - f[0])
    dense = {
        y: torch.trapezoid(density * torch.nn.functional.logsigmoid((2 * y - 1) * f), dx=step)
        for y in (0, 1)
    }
    dense_probs = torch.trapezoid(density * torch.sigmoid(f), dx=step)
    dist_f = gpytorch.distributions.MultivariateNormal(
        torch.full((2,), mean, dtype=torch.float64), torch.eye(2, dtype=torch.float64) * var
    )
    labels = torch.tensor([0.0, 1.0], dtype=torch.float64)
    got = likelihood.expected_log_prob(labels, dist_f)
    # 32 Gauss–Hermite nodes: to 1e-9 at var ≤ 1, 1e-5 at var = 9 (f's spread on the moons: < 5)
    assert float(got[0]) == pytest.approx(float(dense[0]), abs=2e-5)
    assert float(got[1]) == pytest.approx(float(dense[1]), abs=2e-5)
    assert float(likelihood.marginal(dist_f).probs[0]) == pytest.approx(
        float(dense_probs), abs=2e-5
    )
    # log p(y) = log E[p(y|f)]: log(1 − E[σ(f)]) for y = 0, log E[σ(f)] for y = 1
    log_marginal = likelihood.log_marginal(labels, dist_f)
    assert float(log_marginal[1].exp()) == pytest.approx(float(dense_probs), abs=2e-5)
    assert float(log_marginal[0].exp()) == pytest.approx(1 - float(dense_probs), abs=2e-5)
    # and it is the logistic link, not GPyTorch's probit
    probit = gpytorch.likelihoods.BernoulliLikelihood().double().expected_log_prob(labels, dist_f)
    assert (probit - got).abs().max() > 1e-3  # (the least: 2e-3, at f ~ N(0, 0.01))


@pytest.fixture(scope="module")
def both_run():
    pyro.clear_param_store()
    return experiment.run(
        models=("mvn", "gpytorch"),
        progress=False,
        keep_posteriors=True,
        lambdas=(0.0,),
        retrain_steps=400,
        retrain_particles=32,
        unlearn_steps=200,
        num_particles=128,
        lr=0.1,
        num_eval_samples=500,
    )


def test_run_reports_both_variants(both_run, data):
    rows = {(r["guide"], r["method"], r["lam"]): r for r in both_run["rows"]}
    assert set(rows) == {
        (guide, method, lam)
        for guide in ("mvn", "gpytorch")
        for method, lam in (("full", 1.0), ("eubo", 0.0), ("rkl", 0.0))
    }
    assert set(both_run["training"]) == set(both_run["settings"]["models"]) == {"mvn", "gpytorch"}
    assert both_run["settings"]["jitter"] == {"mvn": 0.0, "gpytorch": 0.0}
    assert both_run["training"]["gpytorch"]["gpytorch_max_abs_gradient"] < 1e-5
    # the paper's findings hold for the GPyTorch SVGP unlearned through PyroSVGP: rKL at λ = 0
    # forgets D_e, the EUBO at λ = 0 is catastrophic
    full, rkl, eubo = (
        rows[("gpytorch", m, lam)] for m, lam in (("full", 1), ("rkl", 0), ("eubo", 0))
    )
    assert full["kl_erased_mean"] > 0.2
    assert rkl["kl_erased_mean"] < 0.4 * full["kl_erased_mean"]
    assert eubo["kl_erased_mean"] > 2 * full["kl_erased_mean"]
    # the reference is near the SVGP's exact D_r optimum; the erasure widened q
    assert both_run["training"]["gpytorch"]["retrain_kl_to_optimum"] < 0.1
    assert both_run["entropy_reduction_exact"]["gpytorch"] > 0.5
    # the figures read the variant's predictive model
    model, posteriors = both_run["model"]["gpytorch"], both_run["posteriors"]["gpytorch"]
    grid = torch.tensor([[2.0, -0.5], [-1.0, 0.5]], dtype=data.x.dtype)
    full_p = experiment.predictive_surface(model, posteriors["full"], grid, num_samples=2000)
    retrained = experiment.predictive_surface(model, posteriors["retrained"], grid, 2000)
    assert full_p[0] > 0.85 and retrained[0] < full_p[0] - 0.2
    assert abs(float(full_p[1] - retrained[1])) < 0.05


# -- membership inference -----------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["sorted", "random", "full"])
def test_mia_nonmembers_are_fresh_points_picked_by_the_erasure_rule(scenario):
    data = datasets.moons(scenario)
    groups = experiment.mia_nonmembers(data, 100, seed=0)
    x, y = groups["matched"]
    px, py = groups["population"]
    assert x.shape == px.shape == (100, 2) and x.dtype == data.x.dtype
    cut = data.x[data.erased, 0].min()
    if scenario == "random":
        assert torch.equal(x, px) and torch.equal(y, py)
    else:
        assert bool((x[:, 0] >= cut).all()) and not bool((px[:, 0] >= cut).all())
    if scenario == "full":
        assert bool((y == 1).all())
    # fresh draws, not the training points; labels the generator's
    assert torch.cdist(torch.cat([x, px]), data.x).min() > 1e-6
    assert set(py.tolist()) == {0.0, 1.0}
    again = experiment.mia_nonmembers(data, 100, seed=0)["matched"][0]
    assert torch.equal(again, x)
    assert not torch.equal(experiment.mia_nonmembers(data, 100, seed=1)["matched"][0], x)


def test_quick_run_membership_inference(quick_run):
    rows = {(r["method"], r["lam"]): r for r in quick_run["rows"]}
    retrained = quick_run["mia"]["mvn"]["retrained"]
    columns = ("accuracy", "auc", "logistic_accuracy", "logistic_auc")
    for row in [*rows.values(), retrained]:
        for prefix in ("mia", "mia_population"):
            assert all(math.isfinite(row[f"{prefix}_{c}"]) for c in columns)
    assert quick_run["settings"]["mia_nonmembers"] == {"matched": 200, "population": 200}
    # matched non-members: the retrained posterior (which never saw D_e) cannot tell them from
    # D_e (chance up to the noise of 20 members: the AUC's sd is about 0.07) ...
    assert abs(retrained["mia_auc"] - 0.5) < 0.25
    # ... while against the whole population, D_e's region, forgotten, has the higher losses
    full, rkl = rows[("full", 1.0)], rows[("rkl", 0.0)]
    assert retrained["mia_population_auc"] < 0.35 < full["mia_population_auc"]
    # and the rKL at λ = 0 forgets it as retraining did
    gap = abs(rkl["mia_population_auc"] - retrained["mia_population_auc"])
    assert gap < abs(full["mia_population_auc"] - retrained["mia_population_auc"]) / 2


# -- the membership study ------------------------------------------------------------------------
def test_quadrature_predictive_checks_its_input(model, data):
    q = pu.freeze(AutoMultivariateNormal(model), data.x[:3], data.y[:3])
    with pytest.raises(ValueError, match=r"x must be \(points, 2\), got shape \(3, 3\)"):
        experiment.quadrature_predictive(model, q, torch.zeros(3, 3, dtype=data.x.dtype))
    with pytest.raises(ValueError, match=r"num_nodes must be in \[1, 300\], got 0"):
        experiment.quadrature_predictive(model, q, data.x, num_nodes=0)
    svgp = experiment.SVGPClassifier(data.inducing)
    with pytest.raises(TypeError, match="needs the authors' model .* got SVGPClassifier"):
        experiment.quadrature_predictive(svgp, q, data.x)
    with pytest.raises(ValueError, match="seeds is empty"):
        experiment.membership_study(seeds=())
    with pytest.raises(ValueError, match="seeds must be non-negative"):
        experiment.membership_study(seeds=(0, -1))


@pytest.fixture(scope="module")
def study():
    return experiment.membership_study(
        seeds=(0, 1),
        lambdas=(0.0,),
        retrain_steps=400,
        retrain_particles=64,
        unlearn_steps=200,
        num_particles=128,
        mia_repeats=1,
        progress=False,
        keep_posteriors=True,
    )


def test_membership_study_shape(study):
    names = ["full", "retrained", "retrained again", "retrained (exact)", "eubo λ=0", "rkl λ=0"]
    assert [r["posterior"] for r in study["rows"]] == names * 2
    assert [r["seed"] for r in study["rows"]] == [0] * 6 + [1] * 6
    assert (
        [s["posterior"] for s in study["summary"]]
        == [p["posterior"] for p in study["per_example"]]
        == names
    )
    comparisons = {(c["posterior"], c["metric"]) for c in study["comparisons"]}
    assert comparisons == {(u, m) for u in names[4:] for m in experiment.MIA_STUDY_METRICS}
    for row in study["rows"]:
        assert all(
            math.isfinite(row[f"{p}_{c}"])
            for p in ("mia", "mia_population")
            for c in ("accuracy", "auc", "logistic_accuracy", "logistic_auc")
        )
    assert study["settings"]["num_members"] == 20
    assert study["settings"]["num_nonmembers"] == {"matched": 200, "population": 200}
    study = {k: v for k, v in study.items() if k not in ("posteriors", "model")}
    json.dumps(study, allow_nan=False)  # strict JSON


def test_membership_study_losses_are_exact_and_paired(study, data):
    rows = {(r["seed"], r["posterior"]): r for r in study["rows"]}
    posteriors, model = study["posteriors"], study["model"]
    # the quadrature predictive is the Monte-Carlo one without its noise (50 000 draws: ~1e-3)
    x = data.x[data.erased]
    for name in ("full", "rkl λ=0"):
        pyro.set_rng_seed(0)
        mc = pu.metrics.predictive_distribution(
            model, posteriors[name], x, site="y", num_samples=50_000
        ).probs
        exact = experiment.quadrature_predictive(model, posteriors[name], x)[:, 1].exp()
        assert torch.allclose(exact, mc, atol=3e-3, rtol=0)
    # D_e is fixed: its per-example losses, and so their distances, are the same for every draw
    for name in ("full", "rkl λ=0"):
        assert rows[0, name]["loss_to_retrained"] == rows[1, name]["loss_to_retrained"]
    assert rows[0, "full"]["loss_to_full"] == rows[0, "retrained"]["loss_to_retrained"] == 0.0
    # paired, per example on D_e: the rKL at λ = 0 moves the losses towards the retrained
    # posterior's, and its predictive far towards it by the paper's KL; the EUBO at λ = 0
    # overshoots, past q(u|D)'s distance (at the demo's settings: 0.22 and 0.054, full 0.43
    # and 0.38, EUBO λ = 0 6.5 and 3.7)
    per_example = {p["posterior"]: p for p in study["per_example"]}
    full, rkl, eubo = (per_example[n] for n in ("full", "rkl λ=0", "eubo λ=0"))
    assert full["loss_to_retrained"] > 10 * per_example["retrained again"]["loss_to_retrained"]
    assert rkl["loss_to_retrained"] < 0.75 * full["loss_to_retrained"]
    assert rkl["kl_from_retrained"] < 0.4 * full["kl_from_retrained"]
    assert eubo["loss_to_retrained"] > 2 * full["loss_to_retrained"]
    assert eubo["kl_from_retrained"] > 2 * full["kl_from_retrained"]
    # against the population, the retrained posterior's losses on D_e (its forgotten region)
    # are the higher ones (AUC well below ½), q(u|D)'s are not; the rKL at λ = 0 is with the
    # retrained posterior on every draw, far above the optimiser's noise
    comparison = next(
        c
        for c in study["comparisons"]
        if (c["posterior"], c["metric"]) == ("rkl λ=0", "mia_population_auc")
    )
    assert comparison["mean_retrained"] < 0.35 < comparison["mean_full"]
    assert comparison["closer_seeds"] == 2 and comparison["gap_over_noise"] > 5
