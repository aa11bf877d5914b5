"""forget's trust check and collapse watch on the conjugate linear regression (exact targets)."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_unlearn
from pyro_unlearn.forget import (
    WeightCollapseWarning,
    collapsed_ess_threshold,
    weights_collapsed,
)
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import gaussian_kl
from pyro_unlearn.trust import TrustDiagnostics
from tests.regressions import poisoned_regression

QUICK = {"method": "eubo", "num_steps": 5, "progress": False}


def features(x):
    return torch.cat([x, x.new_ones(len(x), 1)], dim=-1)


@pytest.mark.parametrize("seed", range(3))
def test_random_small_erasure_is_trusted(linreg, model, trained, seed):
    guide = trained(AutoMultivariateNormal)
    torch.manual_seed(seed)
    erased = torch.zeros(len(linreg.x), dtype=torch.bool)
    erased[torch.randperm(len(linreg.x))[:5]] = True
    loc, cov = (t.clone() for t in read_gaussian(guide))
    t_loc, t_prec = gaussian_linear_unlearn(
        loc, torch.linalg.inv(cov), features(linreg.x[erased]), linreg.y[erased], 0.5
    )
    target = (t_loc, torch.linalg.inv(t_prec))
    before = float(gaussian_kl(loc, cov, *target))
    result = pu.forget(
        model,
        guide,
        linreg.x,
        linreg.y,
        erased=erased,
        plate="data",
        num_particles=512,
        num_steps=400,
        window=50,
        lr=0.02,
        progress=False,
    )
    after = float(gaussian_kl(*read_gaussian(result.posterior), *target))
    assert after < 0.01 and after < 0.25 * before  # 0.001-0.004 from 0.03-0.08
    assert result.converged and not result.collapsed
    assert result.verdict == "trusted", result.summary()
    # method="auto" (the default) stops at the paper's reverse KL when it is trusted
    assert result.method == "rkl" and result.loss_options == {} and len(result.attempts) == 1
    assert result.attempts[0]["chosen"] and result.attempts[0]["verdict"] == "trusted"
    assert result.summary().startswith("trusted: ") and "k̂ = " in result.summary()
    assert isinstance(result.trust, TrustDiagnostics) and result.trust.num_samples == 1000
    # the estimate of KL(q_u ‖ p̃) tracks the exact one (p̃ is Gaussian here)
    assert abs(result.trust.kl - after) < 4 * result.trust.kl_se + 0.005
    row = result.trust_row
    assert row["verdict"] == "trusted" and row["pareto_k"] == result.trust.pareto_k


@pytest.mark.parametrize("seed", range(3))
def test_collapse_warns_and_is_not_converged(seed):
    data, model, guide, retrained = poisoned_regression()
    full = float(gaussian_kl(*read_gaussian(guide), *retrained))
    pyro.set_rng_seed(seed)
    with pytest.warns(WeightCollapseWarning, match="importance weights collapsed") as record:
        result = pu.forget(  # the paper's reverse KL: θ_s ~ q(θ|D), 64 particles
            model,
            guide,
            data.x,
            data.y,
            erased=data.erased,
            plate="data",
            method="rkl",
            num_steps=300,
            progress=False,
        )
    assert len([w for w in record if w.category is WeightCollapseWarning]) == 1  # once per run
    assert issubclass(WeightCollapseWarning, pu.LowESSWarning)
    assert result.collapsed and not result.converged
    assert weights_collapsed(result.ess, 64, 100)
    # far from the retrained posterior, and the verdict says so
    assert float(gaussian_kl(*read_gaussian(result.posterior), *retrained)) > 0.5 * full
    assert result.verdict == "retrain", result.summary()
    assert "weights collapsed" in result.summary()
    assert result.trust.update_ess_fraction < 0.05  # 0.4-2 % of q(θ|D)'s draws carry p̃


@pytest.mark.parametrize("seed", range(2))
def test_auto_escalates_when_the_reverse_kl_collapses(seed):
    """The paper's reverse KL collapses on the poisoned cluster; method="auto" moves on to the
    annealed reverse KL from the current guide, which reaches the retrained posterior, keeps
    it in the guide, and records both runs."""
    data, model, guide, retrained = poisoned_regression()
    full = float(gaussian_kl(*read_gaussian(guide), *retrained))
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightCollapseWarning)  # the run kept did not collapse
        result = pu.forget(
            model, guide, data.x, data.y, erased=data.erased, plate="data", num_steps=300,
            progress=False,
        )  # fmt: skip
    first = result.attempts[0]
    assert first["method"] == "rkl" and first["loss_options"] == {}
    assert first["verdict"] != "trusted" and not first["chosen"]  # q(θ|D)'s draws: ESS ≈ 1-4
    assert len(result.attempts) >= 2 and sum(row["chosen"] for row in result.attempts) == 1
    assert not result.collapsed and result.attempts[1]["loss_options"]["proposal"] == "current"
    unlearned = float(gaussian_kl(*read_gaussian(result.posterior), *retrained))
    assert unlearned < 0.02 * full  # ≈ 0.002 of 46 nats; the paper's rKL stays above 0.5·full
    assert float(gaussian_kl(*read_gaussian(guide), *retrained)) == pytest.approx(unlearned)
    assert result.seconds == pytest.approx(sum(row["seconds"] for row in result.attempts))
    assert result.trust.kl < 0.1 * result.trust.update_kl  # q_u sits on p̃
    # a Gaussian guide: every run in its own geometry, the EUBO too (where the ladder got there)
    assert all(row["solver"] == "natural" for row in result.attempts if row["error"] is None)


def test_diagnose_false_skips_the_check(linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    args = (model, guide, linreg.x, linreg.y)
    result = pu.forget(*args, erased=linreg.erased, plate="data", diagnose=False, **QUICK)
    assert result.trust is None and result.verdict is None
    assert "diagnose=False" in result.summary()
    row = result.trust_row
    assert row["verdict"] is None and math.isnan(row["pareto_k"]) and math.isnan(row["kl"])
    assert set(row) == {"verdict", *TrustDiagnostics.__dataclass_fields__}


def test_model_without_particle_plate_is_diagnosed_by_vmap(linreg, model):
    def flat(x, y=None):  # reads w as one vector: cannot take a particle plate (vmap can)
        w = pyro.sample("w", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
        b = pyro.sample("b", dist.Normal(x.new_zeros(()), 10.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(x @ w.reshape(-1)[:2] + b.reshape(-1)[0], 0.5), obs=y)

    guide = AutoMultivariateNormal(flat)
    guide(linreg.x, linreg.y)
    args = (linreg.x, linreg.y)
    options = dict(erased=linreg.erased, plate="data", num_particles=8, **QUICK)
    result = pu.forget(flat, guide, *args, **options)
    assert result.particles == "vmap" and result.num_steps == 5
    assert result.verdict is not None and result.trust.fit_pareto_k is None  # no fit check
    # the same numbers as a model that takes the plate: the diagnostics of the vectorised twin
    twin = pu.trust.diagnose(
        model, result.posterior, result.original, *args, erased=linreg.erased, plate="data"
    )
    assert result.trust.update_kl == pytest.approx(twin.update_kl, rel=0.3, abs=0.05)
    with pytest.raises(ValueError, match="cannot take"):
        pu.trust.diagnose(
            flat, result.posterior, result.original, *args, erased=linreg.erased, plate="data"
        )


def test_diagnose_options_are_checked(linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    args = (model, guide, linreg.x, linreg.y)
    with pytest.raises(ValueError, match="diagnose_samples must be at least 100"):
        pu.forget(*args, erased=linreg.erased, plate="data", diagnose_samples=50, **QUICK)
    with pytest.raises(TypeError, match="diagnose must be True or False"):
        pu.forget(*args, erased=linreg.erased, plate="data", diagnose="yes", **QUICK)


def test_collapse_rule():
    assert collapsed_ess_threshold(64) == 2.0 and collapsed_ess_threshold(1000) == 10.0
    assert weights_collapsed([1.0] * 100, 64, 50)
    assert not weights_collapsed([1.0] * 50 + [3.0] * 50, 64, 50)  # recovered
    assert weights_collapsed([3.0] * 50 + [9.0] * 50, 1000, 50)  # 1 % of 1000 = 10
    assert not weights_collapsed([], 64, 50)  # no weights (the EUBO)
    assert not weights_collapsed([1.0] * 100, 3, 50)  # too few particles to tell


def test_model_neither_plate_nor_vmap_can_take_is_not_diagnosed(linreg):
    def branching(x, y=None):  # a Python branch on θ: one particle at a time only
        w = pyro.sample("w", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
        b = pyro.sample("b", dist.Normal(x.new_zeros(()), 10.0))
        shift = 1.0 if float(b.detach()) > 100.0 else 0.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(x @ w + b + shift, 0.5), obs=y)

    guide = AutoMultivariateNormal(branching)
    guide(linreg.x, linreg.y)
    options = dict(erased=linreg.erased, plate="data", num_particles=4, **QUICK)
    result = pu.forget(branching, guide, linreg.x, linreg.y, **options)
    assert result.particles == "sequential" and result.num_steps == 5
    assert result.verdict is None and result.trust is None
    assert result.summary().startswith("not diagnosed: the model cannot take a particle plate")
