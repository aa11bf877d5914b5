"""The λ-sweep runner (pyro_unlearn/sweep.py) on the conjugate regression."""

import math

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from scipy.stats import chi2

import pyro_unlearn as pu
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import gaussian_kl


def test_sweep_table_and_the_exact_target(linreg, model, trained, exact_target):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    start = tuple(t.clone() for t in read_gaussian(guide))

    def evaluate(posterior):
        return {"kl_target": float(gaussian_kl(*read_gaussian(posterior), loc, cov))}

    erased = linreg.x[linreg.erased], linreg.y[linreg.erased]
    result = pu.lambda_sweep(
        model,
        guide,
        *erased,
        evaluate=evaluate,
        lambdas=(1.0, 0.0),
        num_steps=400,
        num_particles=1024,
        lr=0.02,
        progress=False,
    )
    table = result.table
    assert list(table.columns[:3]) == ["guide", "method", "lam"]
    assert len(table) == 5 and set(result.posteriors) == {
        "full",
        "eubo λ=1",
        "rkl λ=1",
        "eubo λ=0",
        "rkl λ=0",
    }
    full = table[table.method == "full"].kl_target.item()
    assert full > 0.5
    at = table.set_index(["method", "lam"]).kl_target
    # λ = 1 unlearns nothing; λ = 0 reaches the closed-form target with both losses
    assert at[("eubo", 1.0)] == pytest.approx(full, rel=0.05)
    # (the rKL at λ = 1 refits q(θ|D) to its own draws: its end point wanders, sd ≈ 5 % of full
    # over seeds, and the seed here depends on which tests ran before)
    assert at[("rkl", 1.0)] == pytest.approx(full, rel=0.2)
    assert at[("eubo", 0.0)] < 0.05 and at[("rkl", 0.0)] < 0.05
    assert table.lam[0] == 1.0  # the full row: λ = 1 unlearns nothing
    assert math.isnan(table.ess[0]) and table[table.method == "rkl"].ess.notna().all()
    # the live guide holds q(θ|D) again
    assert torch.allclose(read_gaussian(guide)[0], start[0])


def test_sweep_rejects_an_unknown_method(model, linreg, trained):
    with pytest.raises(ValueError, match="methods must be"):
        pu.lambda_sweep(
            model, trained(AutoMultivariateNormal), linreg.x, evaluate=dict, methods=("elbo",)
        )


def test_sweep_plot_draws_the_papers_panels():
    rows = [{"guide": "g", "method": "full", "lam": 1.0, "kl_erased_mean": 0.5}]
    rows += [
        {"guide": "g", "method": m, "lam": lam, "kl_erased_mean": v}
        for m, v in (("eubo", 0.1), ("rkl", 0.2))
        for lam in (1e-3, 0.0)
    ]
    rows = [{**r, "kl_remaining_mean": r["kl_erased_mean"] / 10} for r in rows]
    result = pu.SweepResult(rows)
    fig = result.plot(title="t")
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["averaged KL on $D_e$", "averaged KL on $D_r$"]
    # one line per method (2 points each: λ = 0 drawn at the left end) and the full baseline
    lines = axes[0].get_lines()
    assert len(lines) == 3 and [len(line.get_xdata()) for line in lines[:2]] == [2, 2]
    assert lines[2].get_ydata()[0] == 0.5
    with pytest.raises(ValueError, match="no column"):
        result.plot({"kl_target": "KL"})
    plt.close(fig)


def test_sweep_on_the_mass_scale(linreg, model, trained):
    """``masses`` sweeps the share of q(θ|D) kept: each becomes λ = lam_for_mass(q(θ|D), m),
    the χ²_M quantile's (M = 3: w ∈ R², b); rows hold both; a small mass asked for on
    purpose does not warn."""
    guide = trained(AutoMultivariateNormal)
    posterior = pu.freeze(guide)
    erased = linreg.x[linreg.erased], linreg.y[linreg.erased]
    masses = (0.01, 0.5, 1.0)
    result = pu.lambda_sweep(
        model,
        guide,
        *erased,
        evaluate=lambda q: {},
        masses=masses,
        methods=("eubo",),
        posterior=posterior,
        num_steps=5,
        num_particles=16,
        diagnose=False,
        progress=False,
    )
    rows = result.rows[1:]
    assert [r["mass"] for r in rows] == list(masses)
    for row, mass in zip(rows, masses, strict=True):
        assert row["lam"] == pytest.approx(math.exp(-chi2.ppf(mass, 3) / 2), rel=1e-6)
    assert rows[-1]["lam"] == 0.0 and result.rows[0]["mass"] == 0.0
    assert set(result.posteriors) == {"full", "eubo mass=0.01", "eubo mass=0.5", "eubo mass=1"}


def test_sweep_warns_once_for_lambdas_that_keep_almost_no_mass():
    """At M = 50, λ = 1e-5 and 1e-6 keep 0.04 % and 0.003 % of q(θ|D): one warning for both;
    each row records the share its λ keeps (the χ²₅₀ CDF)."""
    x, y = torch.randn(6, 49), torch.randn(6)

    def regression(x, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1] + 1), 1.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal((x * w[:-1]).sum(-1) + w[-1], 1.0), obs=y)

    guide = AutoNormal(regression)
    guide(x, y)
    options = dict(evaluate=lambda q: {}, methods=("eubo",), num_steps=2, num_particles=4)
    options.update(diagnose=False, progress=False)
    with pytest.warns(pu.infer.SmallKeptMassWarning) as caught:
        result = pu.lambda_sweep(regression, guide, x, y, lambdas=(1e-5, 1e-6, 0.0), **options)
    assert len(caught) == 1
    assert "λ = 1e-05 keeps 0.038 %" in str(caught[0].message)
    assert "λ = 1e-06 keeps" in str(caught[0].message)
    assert caught[0].filename == __file__  # it points at the sweep's caller
    kept = [r["mass"] for r in result.rows[1:]]
    assert kept[:2] == pytest.approx([chi2.cdf(-2 * math.log(lam), 50) for lam in (1e-5, 1e-6)])
    assert kept[2] == 1.0
