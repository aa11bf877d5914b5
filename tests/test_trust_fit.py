"""The check of q(θ|D) itself (Yao et al.'s k̂ of p(D, θ)/q(θ|D)) and of the target p̃ against
p(θ|D_r), on a conjugate normal mean whose posteriors are exact."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.forget.auto import should_escalate
from pyro_unlearn.forget.result import ForgetResult
from pyro_unlearn.guides import write_gaussian
from pyro_unlearn.trust import diagnose, own_fit_caveat, target_kl, verdict

PRIOR_PRECISION = 0.01  # N(0, 10²)
N, ERASED = 10, 2


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def subsampled(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y), subsample_size=3) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def gaussian(fn, y, loc: float, precision: float) -> pu.FrozenPosterior:
    guide = AutoNormal(fn)
    guide(y)
    scale = torch.tensor([precision**-0.5])
    return pu.freeze(write_gaussian(guide, torch.tensor([loc]), scale=scale))


def exact(y: torch.Tensor) -> tuple[float, float]:
    """(mean, precision) of p(μ|y)."""
    precision = len(y) + PRIOR_PRECISION
    return float(y.sum()) / precision, precision


def kl_normal(m1: float, p1: float, m2: float, p2: float) -> float:
    """KL(N(m1, 1/p1) ‖ N(m2, 1/p2))."""
    return 0.5 * (p2 / p1 - 1.0 - math.log(p2 / p1) + p2 * (m1 - m2) ** 2)


def divided(loc: float, precision: float, y_e: torch.Tensor) -> tuple[float, float]:
    """q/p(D_e|μ) for q = N(loc, 1/precision): the exact Gaussian p̃."""
    p = precision - len(y_e)
    return (precision * loc - float(y_e.sum())) / p, p


@pytest.fixture
def data():
    pyro.clear_param_store()
    return torch.linspace(-1.0, 1.0, N) + 0.3


def test_exact_posterior_fits_and_its_division_is_trusted(data):
    loc, precision = exact(data)
    full = gaussian(model, data, loc, precision)
    retrained = gaussian(model, data, *exact(data[ERASED:]))
    # S = 4000: the update's k̂ (bounded weights, k near 0) reads up to 0.7 at S = 1000
    d = diagnose(
        model, retrained, full, data, erased=torch.arange(ERASED), plate="data", num_samples=4000
    )
    # log p(D, θ) − log q(θ|D) = log p(D) at every draw: the weights are constant
    assert d.fit_pareto_k < 0.5 and abs(d.fit_kl) < 1e-3
    assert abs(d.target_kl) < 1e-2 and d.target_kl_se < 1e-2
    truth = kl_normal(loc, precision, *exact(data[ERASED:]))
    assert d.original_kl == pytest.approx(truth, rel=0.15, abs=2e-3)
    assert own_fit_caveat(d) is None and verdict(d).label == "trusted", verdict(d)


def test_subsampling_plate_counts_every_row_once(data):
    loc, precision = exact(data)
    full = gaussian(subsampled, data, loc, precision)
    retrained = gaussian(subsampled, data, *exact(data[ERASED:]))
    d = diagnose(subsampled, retrained, full, data, erased=torch.arange(ERASED), plate="data")
    # a batch of 3 scaled by 10/3 would make the weights vary: they are constant
    assert d.fit_pareto_k < 0.5 and abs(d.fit_kl) < 1e-3 and abs(d.target_kl) < 1e-2


def test_subsampling_plate_with_more_erased_rows_than_its_batch(data):
    # 7 erased rows, batch 3: log p(D_e|θ) is read in parts, each row once (a random batch of 3
    # scaled by 7/3 made the target a different function of θ at every draw)
    erased = torch.tensor([0, 2, 3, 5, 6, 8, 9])
    kept = torch.ones(N, dtype=torch.bool)
    kept[erased] = False
    loc, precision = exact(data)
    full = gaussian(subsampled, data, loc, precision)
    retrained = gaussian(subsampled, data, *exact(data[kept]))
    d = diagnose(subsampled, retrained, full, data, erased=erased, plate="data")
    assert d.pareto_k < 0.5 and abs(d.kl) < 1e-3 and abs(d.target_kl) < 1e-2
    assert d.update_kl > 0.01  # the request is not empty


@pytest.mark.parametrize("seed", range(4))
def test_nothing_unlearned_is_retrain_on_any_draws(data, seed):
    # q_u = q(θ|D): the two KL estimates the verdict compares come from common random numbers,
    # so they are equal, not two independent estimates 2 se apart by chance
    pyro.set_rng_seed(seed)
    full = gaussian(subsampled, data, *exact(data))
    erased = torch.tensor([0, 3, 5, 8])
    nothing = diagnose(subsampled, full, full, data, erased=erased, plate="data")
    assert nothing.kl == pytest.approx(nothing.update_kl, rel=1e-6) and nothing.kl > 0.01
    assert verdict(nothing).label == "retrain"


def test_shifted_original_caps_a_perfect_division(data):
    """q(θ|D) one sd off p(θ|D) (mini-batch noise): q_u = p̃ exactly, yet p̃ is further from
    p(θ|D_r) than q(θ|D) is: retrain, and the estimates match the closed forms."""
    loc, precision = exact(data)
    shifted = loc + precision**-0.5
    full = gaussian(model, data, shifted, precision)
    target = divided(shifted, precision, data[:ERASED])
    q_u = gaussian(model, data, *target)
    # the update's k̂ lies near k_S at S = 1000 (0.6-0.7 by the draws): more draws, k_S = 0.72
    d = diagnose(
        model, q_u, full, data, erased=torch.arange(ERASED), plate="data", num_samples=4000
    )
    truth = exact(data[ERASED:])
    assert d.target_kl == pytest.approx(kl_normal(*target, *truth), rel=0.2)
    assert d.original_kl == pytest.approx(kl_normal(shifted, precision, *truth), rel=0.2)
    assert d.fit_kl == pytest.approx(kl_normal(shifted, precision, loc, precision), rel=0.2)
    assert verdict(d, check_fit=False).label == "trusted", verdict(d, check_fit=False)
    # p̃ is 0.62 nats from p(θ|D_r), q(θ|D) 0.047: unlearning is worse than doing nothing
    judged = verdict(d)
    assert judged.label == "retrain" and "p̃ itself is further" in judged.explanation


def test_narrow_original_has_a_large_fit_k(data):
    loc, precision = exact(data)
    full = gaussian(model, data, loc, 9.0 * precision)  # a third of the sd: heavy p/q tails
    q_u = gaussian(model, data, *divided(loc, 9.0 * precision, data[:ERASED]))
    d = diagnose(model, q_u, full, data, erased=torch.arange(ERASED), plate="data")
    assert d.fit_pareto_k > 0.5
    judged = verdict(d)
    assert judged.label != "trusted" and "fit of p(θ|D)" in judged.explanation


def test_no_fit_check_without_the_full_data(data):
    loc, precision = exact(data)
    full = gaussian(model, data, loc, precision)
    d = diagnose(model, full, full, data[:ERASED])  # D_e alone
    assert d.fit_pareto_k is None and d.target_kl is None and own_fit_caveat(d) is None


def test_auto_stops_when_only_q_itself_sets_the_verdict(data):
    loc, precision = exact(data)
    shifted = loc + precision**-0.5
    full = gaussian(model, data, shifted, precision)
    q_u = gaussian(model, data, *divided(shifted, precision, data[:ERASED]))
    d = diagnose(
        model, q_u, full, data, erased=torch.arange(ERASED), plate="data", num_samples=4000
    )
    result = ForgetResult(guide=None, posterior=q_u, original=full, converged=True)
    result.trust, result.verdict = d, verdict(d).label
    # "retrain" by q(θ|D)'s own check alone: every run starts from it, none can earn more
    assert result.verdict == "retrain" and not should_escalate(result)
    result.collapsed = True
    assert should_escalate(result)


def test_target_kl_closed_form():
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(20_000, generator=g)  # q = N(0, 1); p̃ = N(0.5, 1) by weights
    log_v = 0.5 * theta  # ∝ N(θ; 0.5, 1)/N(θ; 0, 1)
    log_ratio = -0.5 * (theta - 1.0) ** 2 + 0.5 * (theta - 0.5) ** 2  # p = N(1, 1)
    kl, se = target_kl(log_ratio, log_v)
    assert abs(kl - 0.125) < 4 * se and se < 0.01
    assert target_kl(torch.full((100,), -math.inf), torch.zeros(100))[0] == math.inf
    # every term 10⁴ nats below e⁰: no underflow to log(0) (the sine's L-BUN rows met it);
    # E_p̃[e^l] = e^{-10⁴}(1 + 50/150), E_p̃[l] = −10⁴, so KL = log(4/3)
    log_ratio = torch.cat([torch.full((150,), -1e4), torch.zeros(50)])
    log_v = torch.cat([torch.zeros(150), torch.full((50,), -1e4)])
    kl, _ = target_kl(log_ratio, log_v)
    assert kl == pytest.approx(math.log(4 / 3), abs=1e-6)
