import math

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.forget import has_converged, run_until_flat
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import gaussian_kl
from pyro_unlearn.results import UnlearningResult


def test_forget_unlearns_and_reports(linreg, model, trained, exact_target):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    start = tuple(t.clone() for t in read_gaussian(guide))
    before = float(gaussian_kl(*start, loc, cov))
    result = pu.forget(
        model,
        guide,
        linreg.x,
        linreg.y,
        erased=linreg.erased,
        plate="data",
        method="rkl",
        num_particles=512,
        num_steps=400,
        window=50,
        lr=0.02,
        progress=False,
    )
    after = float(gaussian_kl(*read_gaussian(guide), loc, cov))
    assert after < 0.1 * before and result.solver == "sgd"
    assert result.guide is guide and len(result.losses) == len(result.ess) == result.num_steps
    assert all(1 <= e <= 512 for e in result.ess)
    assert result.diagnostics["temperature"] == [1.0] * result.num_steps  # no annealing
    # posterior: the unlearned posterior, frozen; original: q(θ|D), as every result has them
    assert isinstance(result, UnlearningResult)
    assert float(gaussian_kl(*read_gaussian(result.posterior), loc, cov)) == pytest.approx(after)
    assert torch.allclose(read_gaussian(result.original)[0], start[0])
    unlearned = read_gaussian(result.posterior)[0].clone()
    # A second request from the original q(θ|D): the guide is restored first (lazy unlearning).
    again = pu.forget(
        model,
        guide,
        linreg.x,
        linreg.y,
        erased=linreg.erased[:5],
        plate="data",
        posterior=result.original,
        method="eubo",
        num_steps=5,
        progress=False,
    )
    assert again.original is result.original and again.ess == [] and again.diagnostics == {}
    assert torch.equal(read_gaussian(result.posterior)[0], unlearned)  # an independent copy
    assert not torch.allclose(read_gaussian(again.posterior)[0], unlearned, atol=1e-2)


def test_auto_solves_the_reverse_kl_of_a_gaussian_guide_by_moment_matching(
    linreg, model, trained, exact_target
):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    before = float(gaussian_kl(*read_gaussian(guide), loc, cov))
    result = pu.forget(
        model, guide, linreg.x, linreg.y, erased=linreg.erased, plate="data", progress=False
    )
    after = float(gaussian_kl(*read_gaussian(guide), loc, cov))
    assert after < 0.1 * before  # the 10-row cluster: ≈ 1 nat before
    assert result.solver == "natural" and result.method == "rkl" and result.losses == []
    assert result.num_steps == len(result.ess) > 0 and result.attempts[-1]["solver"] == "natural"
    assert result.likelihood == "fused"  # the conjugate model records: no handlers per step
    assert float(gaussian_kl(*read_gaussian(result.posterior), loc, cov)) == pytest.approx(after)
    # explicit method="rkl" keeps the SGD path
    sgd = pu.forget(
        model, guide, linreg.x, linreg.y, erased=linreg.erased[:5], plate="data",
        posterior=result.original, method="rkl", num_steps=5, progress=False,
    )  # fmt: skip
    assert sgd.solver == "sgd" and len(sgd.losses) == 5


def test_forget_takes_lam_on_the_mass_scale(linreg, model, trained):
    """mass=m runs at the λ whose threshold keeps m of q(θ|D)'s mass (χ²₃ for this 3-dim
    Gaussian guide); a λ keeping under 5 % of the mass warns before anything is trained."""
    guide = trained(AutoMultivariateNormal)
    posterior = pu.freeze(guide, linreg.x, linreg.y)
    common = dict(erased=linreg.erased, plate="data", num_steps=5, progress=False)
    result = pu.forget(model, guide, linreg.x, linreg.y, method="eubo", mass=0.9, **common)
    assert result.lam == pytest.approx(pu.lam_for_mass(posterior, 0.9))
    assert pu.kept_mass(posterior, result.lam) == pytest.approx(0.9, abs=1e-6)
    # χ²₃: P(χ² ≤ 2·log(1/λ)) = 0.9 at 2·log(1/λ) = 6.2514
    assert math.log(1.0 / result.lam) == pytest.approx(6.2514 / 2, rel=1e-3)
    with pytest.warns(pu.SmallKeptMassWarning, match="keeps"):
        pu.forget(  # λ = 0.999 keeps F_χ²₃(0.002) ≈ 1e-5 of the mass
            model, guide, linreg.x, linreg.y, method="eubo", lam=0.999, posterior=posterior,
            **common,
        )  # fmt: skip
    assert pu.kept_mass(posterior, 0.999) < 1e-4


def test_forget_rejects_unknown_method(linreg, model, trained):
    with pytest.raises(ValueError, match="method"):
        pu.forget(model, trained(AutoMultivariateNormal), linreg.x, linreg.y, method="retrain")


def test_convergence_rule():
    assert not has_converged([5.0 - 0.01 * i for i in range(200)], window=50)  # still falling
    flat = [1.0 + (0.1 if i % 2 else -0.1) for i in range(200)]
    assert has_converged(flat, window=50)
    assert not has_converged(flat[:60], window=50)  # too short to tell


@pytest.mark.parametrize("progress", [True, False])
def test_run_until_flat_tests_convergence_once_per_window(progress):
    """The rule is checked at the end of each window only, with or without a progress bar (a
    disabled tqdm bar does not count its steps)."""
    falling = [10.0 - 0.1 * i for i in range(73)]  # then flat, from step 73 on
    losses = iter(falling + [2.7 + (0.1 if i % 2 else -0.1) for i in range(1000)])
    result, converged, _ = run_until_flat(lambda: next(losses), 1000, 50, "flat", progress)
    assert converged and len(result) % 50 == 0


def test_run_until_flat_waits_until_ready():
    """A flat trace does not stop the loop while ``ready()`` is False (an annealed loss before
    its temperature reaches 1)."""
    calls = []
    result, converged, _ = run_until_flat(
        lambda: calls.append(1) or 1.0, 1000, 50, "flat", False, lambda: len(calls) >= 300
    )
    assert converged and len(result) == 300


def test_forget_passes_loss_options_to_the_annealed_reverse_kl(
    linreg, model, trained, exact_target
):
    guide = trained(AutoMultivariateNormal)
    loc, cov = exact_target(guide)
    before = float(gaussian_kl(*read_gaussian(guide), loc, cov))
    result = pu.forget(
        model, guide, linreg.x, linreg.y, erased=linreg.erased, plate="data", num_particles=256,
        num_steps=300, window=50, lr=0.02, progress=False, method="rkl",
        loss_options={"proposal": "current", "anneal": 0.5},
    )  # fmt: skip
    assert float(gaussian_kl(*read_gaussian(guide), loc, cov)) < 0.05 * before
    assert min(result.ess) >= 0.3 * 256  # annealing keeps the weights alive throughout
    beta = result.diagnostics["temperature"]  # recorded every step, never decreasing, up to 1
    assert len(beta) == result.num_steps and beta[0] < 1.0 == beta[-1]
    assert all(a <= b for a, b in zip(beta, beta[1:], strict=False))
    with pytest.raises(ValueError, match="needs proposal='current'"):
        pu.forget(
            model, guide, linreg.x, linreg.y, method="rkl", loss_options={"anneal": 0.5},
            progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="method='auto' chooses the loss itself"):
        pu.forget(model, guide, linreg.x, linreg.y, loss_options={"anneal": 0.5}, progress=False)


def test_forget_names_non_finite_data_before_acting(linreg, model, trained):
    """Infinite data are named as such (argument, row), before a step is taken; they used to
    surface as a non-finite loss blamed on the target."""
    guide = trained(AutoMultivariateNormal)
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    y = linreg.y.clone()
    y[3] = math.inf
    with pytest.raises(ValueError, match=r"args\[1\] has a non-finite value \(inf\) at row 3"):
        pu.forget(model, guide, linreg.x, y, erased=linreg.erased, plate="data", progress=False)
    assert all(torch.equal(v, guide.state_dict()[k]) for k, v in before.items())


def test_forget_stops_on_a_diverging_run_and_rolls_back(linreg, model, trained):
    """A step size that sends the guide to ±inf stops the run with the cause named; the guide
    holds q(θ|D) again, bit for bit, whichever step failed."""
    guide = trained(AutoMultivariateNormal)
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    with pytest.raises(ValueError, match="diverged|normalisable"):
        pu.forget(
            model, guide, linreg.x, linreg.y, erased=linreg.erased, plate="data", lr=1e30,
            method="rkl", num_steps=20, progress=False, optim=pyro.optim.Adam({"lr": 1e30}),
        )  # fmt: skip
    assert all(torch.equal(v, guide.state_dict()[k]) for k, v in before.items())
