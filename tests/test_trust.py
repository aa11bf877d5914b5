"""The trust diagnostics and verdict on a conjugate linear regression, whose p(θ|D_r) is exact."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import gaussian_linear_posterior
from pyro_unlearn.guides import write_gaussian
from pyro_unlearn.results import UnlearningResult
from pyro_unlearn.trust import (
    MIN_UPDATE_ESS_FRACTION,
    VERDICTS,
    Caveats,
    TrustDiagnostics,
    Verdict,
    attach_trust,
    cap_verdict,
    check_diagnose_options,
    diagnose,
    diagnose_draws,
    pareto_k_threshold,
    verdict,
    weighted_verdict,
)

SIGMA, N, D = 1.0, 300, 3


def model(x, y):
    w = pyro.sample("w", dist.Normal(x.new_zeros(D), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal((x * w).sum(-1), SIGMA), obs=y)


def regression(poisoned: bool) -> SimpleNamespace:
    """N rows of y = x·w + N(0, 1); the cluster x₀ > 1 (about 16 %) is an informative erasure,
    and with ``poisoned`` its labels are shifted by 5 (a poisoned batch that moved the fit)."""
    x = torch.randn(N, D)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + SIGMA * torch.randn(N)
    cluster = x[:, 0] > 1.0
    if poisoned:
        y = torch.where(cluster, y + 5.0, y)
    return SimpleNamespace(x=x, y=y, cluster=cluster)


def exact(data: SimpleNamespace, keep: torch.Tensor) -> dist.MultivariateNormal:
    """The exact p(w|D[keep]) under the prior N(0, 10² I)."""
    loc, precision = gaussian_linear_posterior(
        torch.zeros(D), torch.eye(D) / 100.0, data.x[keep], data.y[keep], SIGMA
    )
    return dist.MultivariateNormal(loc, precision_matrix=precision)


def frozen(data: SimpleNamespace, mvn: dist.MultivariateNormal) -> pu.FrozenPosterior:
    """An AutoMultivariateNormal holding ``mvn``, frozen."""
    guide = AutoMultivariateNormal(model)
    guide(data.x, data.y)
    return pu.freeze(write_gaussian(guide, mvn.loc, mvn.covariance_matrix))


def random_rows(count: int) -> torch.Tensor:
    erased = torch.zeros(N, dtype=torch.bool)
    erased[torch.randperm(N)[:count]] = True
    return erased


def run(data, posterior, original, erased, **options) -> TrustDiagnostics:
    return diagnose(
        model, posterior, original, data.x, data.y, erased=erased, plate="data", **options
    )


@pytest.fixture
def clean():
    return regression(poisoned=False)


@pytest.fixture
def poisoned():
    return regression(poisoned=True)


@pytest.mark.parametrize("repeat", range(3))
def test_exact_target_is_trusted(clean, repeat):
    # q(θ|D) = p(θ|D) exactly, so p̃ = p(θ|D_r), and q_u holds it: the weights are constant
    erased = random_rows(5)
    full = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool)))
    d = run(clean, frozen(clean, exact(clean, ~erased)), full, erased)
    assert d.pareto_k < 0.5
    assert abs(d.kl) <= 3 * d.kl_se + 1e-4 and abs(d.kl) < 1e-3
    assert d.psis_ess > 0.99 * d.num_samples
    assert d.update_ess_fraction > 0.3  # a random small erasure: a small update
    assert verdict(d).label == "trusted"
    assert "k̂ = " in verdict(d).explanation and "update ESS" in verdict(d).explanation


def test_kl_estimate_matches_the_closed_form(clean):
    # q_u wider than the exact p(θ|D_r) and shifted: bounded weights, a known KL
    erased = random_rows(5)
    full = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool)))
    target = exact(clean, ~erased)
    wide = dist.MultivariateNormal(
        target.loc + 0.3 * target.covariance_matrix.diagonal().sqrt(),
        1.5 * target.covariance_matrix,
    )
    d = run(clean, frozen(clean, wide), full, erased, num_samples=4000)
    true = float(torch.distributions.kl_divergence(wide, target))  # ≈ 0.28
    assert abs(d.kl - true) < 4 * d.kl_se + 0.01
    assert d.kl_se < 0.02
    assert d.pareto_k < 0.5
    # worse than not unlearning at all (q(θ|D) is ≈ 0.02 nats from p̃): retrain
    assert d.update_kl < 0.5 * d.kl
    assert verdict(d).label == "retrain"
    assert "made it worse" in verdict(d).explanation


def test_original_on_a_clustered_erasure_is_not_trusted(poisoned):
    # q_u = q(θ|D) itself: narrower than p(θ|D_r) and far from it
    full = frozen(poisoned, exact(poisoned, torch.ones(N, dtype=torch.bool)))
    d = run(poisoned, full, full, poisoned.cluster)
    true = float(
        torch.distributions.kl_divergence(
            exact(poisoned, torch.ones(N, dtype=torch.bool)), exact(poisoned, ~poisoned.cluster)
        )
    )
    assert true > 20.0
    assert d.pareto_k > 1.0
    assert d.kl > 3.0 and d.kl > 10 * d.kl_se
    assert verdict(d).label != "trusted"


def test_large_informative_erasure_asks_to_retrain(poisoned):
    # even with q_u exactly p(θ|D_r): p̃ lies where q(θ|D) has almost no draws, so p̃ is only
    # as good as q(θ|D)'s tails (exact here, but nothing without D_r can tell)
    full = frozen(poisoned, exact(poisoned, torch.ones(N, dtype=torch.bool)))
    retrained = frozen(poisoned, exact(poisoned, ~poisoned.cluster))
    d = run(poisoned, retrained, full, poisoned.cluster, num_samples=4000)
    assert d.update_ess_fraction < 0.25 * MIN_UPDATE_ESS_FRACTION  # true: ~exp(−30)
    assert d.update_pareto_k > 1.0
    label, why = verdict(d)
    assert label == "retrain" and "q_u matches p̃" in why and "rests on q(θ|D)'s tails" in why
    # both errors at once: q(θ|D) itself, not unlearned, facing that request
    label, why = verdict(run(poisoned, full, full, poisoned.cluster, num_samples=4000))
    assert label == "retrain" and why.startswith("retrain: ")


def test_lam_one_unlearns_nothing(poisoned):
    # λ = 1: p_adj ≡ 1, so p̃ = q(θ|D): q_u = q(θ|D) is exact and the update is empty, where at
    # λ = 0 the same request collapses the update's weights
    full = frozen(poisoned, exact(poisoned, torch.ones(N, dtype=torch.bool)))
    d = run(poisoned, full, full, poisoned.cluster, lam=1.0)
    assert d.update_ess == pytest.approx(d.num_samples) and d.update_kl == 0.0
    assert d.kl == 0.0 and d.pareto_k == float("-inf") and d.lam == 1.0
    assert verdict(d).label == "trusted"
    moved = run(poisoned, full, full, poisoned.cluster, lam=0.0)
    assert moved.update_ess_fraction < MIN_UPDATE_ESS_FRACTION and moved.kl > 3.0


@pytest.mark.parametrize("structure", ["full", "ggn", "diag"])
def test_precision_share_is_the_erased_information(clean, structure):
    # H_e = X_eᵀX_e/σ² exactly; the share is the top eigenvalue of Lᵀ H_e L, Σ = L Lᵀ
    erased = clean.cluster
    posterior = exact(clean, torch.ones(N, dtype=torch.bool))
    full = frozen(clean, posterior)
    d = run(clean, full, full, erased, curvature=structure)
    h = clean.x[erased].T @ clean.x[erased] / SIGMA**2
    if structure == "diag":
        h = torch.diag(h.diagonal())
    tril = torch.linalg.cholesky(posterior.covariance_matrix)
    expected = float(torch.linalg.eigvalsh(tril.T @ h @ tril)[-1])
    assert d.precision_share == pytest.approx(expected, rel=1e-3)
    assert 0.1 < d.precision_share < 1.0 and d.precision_positive_definite is True


def test_precision_not_positive_definite(clean):
    # q(θ|D) fitted to 20 rows cannot have held 150 erased rows
    few = torch.arange(N) < 20
    narrow = frozen(clean, exact(clean, few))
    d = run(clean, narrow, narrow, torch.arange(N) >= 150, curvature="full")
    assert d.precision_share > 2.0 and d.precision_positive_definite is False
    assert verdict(d).label == "retrain"


def test_caller_random_stream_is_left_alone(clean):
    full, erased = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool))), random_rows(5)
    state = torch.get_rng_state()
    first = run(clean, full, full, erased)
    assert torch.equal(torch.get_rng_state(), state)
    assert run(clean, full, full, erased) == first  # the same draws again


def test_mean_field_guide_is_scored_in_its_own_space(clean):
    # AutoNormal: site-wise loc and scale; q_u = q(θ|D) with λ = 1 has constant weights
    guide = AutoNormal(model)
    guide(clean.x, clean.y)
    full = pu.freeze(guide)
    d = run(clean, full, full, random_rows(5), lam=1.0, num_samples=200)
    assert d.pareto_k == float("-inf") and d.num_samples == 200


# -- the verdict's rules -----------------------------------------------------------------------
GOOD = TrustDiagnostics(
    pareto_k=0.2,
    kl=0.01,
    kl_se=0.005,
    psis_ess=900.0,
    update_ess=800.0,
    update_ess_fraction=0.8,
    update_pareto_k=0.1,
    update_kl=0.3,
    num_samples=1000,
    lam=0.0,
)


@pytest.mark.parametrize(
    "changes, label, phrase",
    [
        ({}, "trusted", "matches"),
        ({"kl": 0.009, "update_kl": 0.001}, "trusted", "matches"),  # below the floor
        ({"pareto_k": 0.55}, "approximate", "near p̃"),
        ({"kl": 0.2}, "approximate", "more than half as far"),
        ({"update_pareto_k": 0.9}, "approximate", "tails"),
        ({"pareto_k": 0.69}, "retrain", "far from p̃"),  # above k_S = 0.67 at S = 1000
        ({"pareto_k": float("nan")}, "retrain", "far from p̃"),
        ({"update_ess": 5.0, "update_ess_fraction": 0.005}, "retrain", "rests on q(θ|D)'s tails"),
        (
            {"update_ess": 5.0, "update_ess_fraction": 0.005, "kl": 0.2},
            "retrain",
            "further than q(θ|D) reaches",
        ),
        ({"kl": 0.5, "kl_se": 0.01}, "retrain", "made it worse"),  # q(θ|D) is 0.3 away
        ({"kl": 0.29, "kl_se": 0.01}, "retrain", "nothing was unlearned"),  # no progress
        (
            {"precision_share": 1.2, "precision_positive_definite": False},
            "retrain",
            "more precision",
        ),
        (  # λ > 0 whose adjusted target is q(θ|D) on all its draws: KL 0 is explained
            {
                "precision_share": 5.2,
                "precision_positive_definite": False,
                "lam": 1e-5,
                "update_pareto_k": float("-inf"),
                "update_kl": 0.0,
            },
            "retrain",
            "unadjusted by λ = 1e-05; p_adj(D_e|θ) is constant on q(θ|D)'s draws",
        ),
    ],
)
def test_verdict_rules(changes, label, phrase):
    result = verdict(replace(GOOD, **changes))
    assert result.label == label and result.label in VERDICTS
    assert result.explanation.startswith(f"{label}: ") and phrase in result.explanation
    assert "\n" not in result.explanation


def test_verdict_threshold_is_an_option():
    small = replace(GOOD, update_ess=50.0, update_ess_fraction=0.05)
    assert verdict(small).label == "trusted"
    assert verdict(small, min_update_ess_fraction=0.1).label == "retrain"


def test_pareto_k_threshold():
    assert pareto_k_threshold(100) == pytest.approx(0.5)
    assert pareto_k_threshold(1000) == pytest.approx(2 / 3)
    assert pareto_k_threshold(10**6) == 0.7
    with pytest.raises(ValueError, match="at least 2"):
        pareto_k_threshold(1)


# -- bad input ---------------------------------------------------------------------------------
def test_bad_input(clean):
    full = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool)))
    erased = random_rows(5)
    with pytest.raises(TypeError, match="posterior must be a FrozenPosterior"):
        run(clean, full.guide, full, erased)
    with pytest.raises(TypeError, match="original must be a FrozenPosterior"):
        run(clean, full, None, erased)
    with pytest.raises(ValueError, match="at least 100"):
        run(clean, full, full, erased, num_samples=50)
    with pytest.raises(ValueError, match="curvature must be"):
        run(clean, full, full, erased, curvature="exact")
    with pytest.raises(ValueError, match="lam"):
        run(clean, full, full, erased, lam=1.5)
    with pytest.raises(TypeError, match="not Gaussian|Gaussian"):
        iaf = AutoIAFNormal(model, hidden_dim=[4])
        iaf(clean.x, clean.y)
        flow = pu.freeze(iaf)
        run(clean, flow, flow, erased, curvature="full")
    other = AutoNormal(lambda x, y: pyro.sample("v", dist.Normal(0.0, 1.0)))
    other(clean.x, clean.y)
    with pytest.raises(ValueError, match="same structure"):
        run(clean, pu.freeze(other), full, erased)
    with pytest.raises(TypeError, match="TrustDiagnostics"):
        verdict(GOOD.as_dict())
    with pytest.raises(ValueError, match="min_update_ess_fraction"):
        verdict(GOOD, min_update_ess_fraction=2.0)


def test_a_model_that_mixes_particles_is_refused(clean):
    def flat(x, y):  # reads the first particle's w only: cannot take a particle plate
        w = pyro.sample("w", dist.Normal(x.new_zeros(D), 10.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(x @ w.reshape(-1)[:D], SIGMA), obs=y)

    full = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool)))
    with pytest.raises(ValueError, match="cannot take"):
        diagnose(flat, full, full, clean.x, clean.y, erased=random_rows(5), plate="data")


# -- caveats: a verdict no better than the method vouches for ----------------------------------
TRUSTED = Verdict("trusted", "trusted: q_u matches p̃ (k̂ = 0.10)")


def test_caveats_cap_the_verdict():
    capped = cap_verdict(TRUSTED, Caveats(approximate=["θ* missed its tolerance"]))
    assert capped.label == "approximate"
    assert capped.explanation == (
        "approximate: θ* missed its tolerance; the diagnostics alone: " + TRUSTED.explanation
    )
    repaired = cap_verdict(TRUSTED, Caveats(retrain=["repaired"], approximate=["slow"]))
    assert repaired.label == "retrain" and repaired.explanation.startswith("retrain: repaired; ")
    assert repaired.explanation.endswith("; also slow")  # already worse: the reason is kept
    worse = Verdict("retrain", "retrain: far")
    assert cap_verdict(worse, Caveats(approximate=["slow"])) == (
        "retrain",
        "retrain: far; also slow",
    )
    noted = cap_verdict(TRUSTED, Caveats(notes=["then 5 HMC moves"]))
    assert noted.label == "trusted" and noted.explanation.endswith("; then 5 HMC moves")
    assert cap_verdict(TRUSTED, Caveats()) == TRUSTED


# -- weighted draws: the reweighting's own k̂ and ESS ------------------------------------------
def test_draws_of_a_gaussian_reweighted_match_the_closed_forms():
    # p(θ|D) = N(0, v) reweighted by 1/N(y; θ, 1) is p̃ = N(m_r, v_r), v_r = 1/(1/v − 1):
    # ESS/S = 1/E[w²] and KL(p(θ|D) ‖ p̃) in closed form; the tail of w has shape k = v
    v, y = 0.1, 1.5  # ESS/S ≈ 0.73, KL ≈ 0.13
    v_r = 1 / (1 / v - 1)
    m_r = -v_r * y
    theta = math.sqrt(v) * torch.randn(20000, dtype=torch.float64)
    d = diagnose_draws(dist.Normal(theta, 1.0).log_prob(torch.tensor(y, dtype=torch.float64)))
    gap = 2 * v - v_r  # > 0: the weights' variance is finite
    ess_fraction = math.sqrt(v_r * gap) / v * math.exp(-(m_r**2) / gap)
    kl = 0.5 * (v / v_r + m_r**2 / v_r - 1 + math.log(v_r / v))
    assert d.update_ess_fraction == pytest.approx(ess_fraction, rel=0.1)
    assert d.update_kl == pytest.approx(kl, rel=0.15)
    assert d.pareto_k == d.update_pareto_k and d.pareto_k < 0.5  # k = 0.1
    assert math.isnan(d.kl) and math.isnan(d.kl_se) and d.precision_share is None
    assert d.num_samples == 20000 and weighted_verdict(d).label == "trusted"


def test_heavy_tailed_weights_ask_to_retrain():
    # v = 0.95: the weights' tail has k = 0.95 (infinite variance); PSIS sees it
    theta = math.sqrt(0.95) * torch.randn(20000, dtype=torch.float64)
    d = diagnose_draws(dist.Normal(theta, 1.0).log_prob(torch.tensor(0.0, dtype=torch.float64)))
    assert d.pareto_k > 0.6
    label, why = weighted_verdict(d)
    assert label == "retrain" and "rerun MCMC on D_r" in why


@pytest.mark.parametrize(
    "changes, label, phrase",
    [
        ({}, "trusted", "stand for p(θ|D_r)"),
        ({"pareto_k": 0.55, "update_pareto_k": 0.55}, "approximate", "large Monte-Carlo error"),
        ({"pareto_k": 0.69, "update_pareto_k": 0.69}, "retrain", "unreliable"),
        ({"pareto_k": float("nan")}, "retrain", "unreliable"),
        ({"update_ess": 5.0, "update_ess_fraction": 0.005}, "retrain", "further than the draws"),
    ],
)
def test_weighted_verdict_rules(changes, label, phrase):
    draws = replace(GOOD, kl=math.nan, kl_se=math.nan, update_pareto_k=GOOD.pareto_k)
    result = weighted_verdict(replace(draws, **changes))
    assert result.label == label and result.explanation.startswith(f"{label}: ")
    assert phrase in result.explanation and "\n" not in result.explanation


def test_bad_draws_are_refused():
    with pytest.raises(ValueError, match="at least 100 draws"):
        diagnose_draws(torch.zeros(50))
    with pytest.raises(ValueError, match=r"tensor \(S,\)"):
        diagnose_draws(torch.zeros(200, 2))
    with pytest.raises(ValueError, match="−log p_adj"):
        diagnose_draws(torch.cat([torch.zeros(199), torch.tensor([float("nan")])]))
    with pytest.raises(TypeError, match="TrustDiagnostics"):
        weighted_verdict(GOOD.as_dict())


# -- attaching the check to a result -------------------------------------------------------------
def test_attach_trust_judges_and_caps(clean):
    erased = random_rows(5)
    full = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool)))
    result = UnlearningResult()
    result.posterior = frozen(clean, exact(clean, ~erased))
    seen = []

    def caveats(d):
        seen.append(d)
        return Caveats(approximate=["not converged"])

    args = (clean.x, clean.y)
    attach_trust(result, model, full, args, {}, erased=erased, plate="data", caveats=caveats)
    assert seen == [result.trust] and result.trust.pareto_k < 0.5
    assert result.verdict == "approximate"
    assert result.summary().startswith("approximate: not converged; the diagnostics alone: trusted")


def test_attach_trust_leaves_an_undiagnosable_model_unjudged(clean):
    def flat(x, y):  # cannot take a particle plate
        w = pyro.sample("w", dist.Normal(x.new_zeros(D), 10.0).to_event(1))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(x @ w.reshape(-1)[:D], SIGMA), obs=y)

    full = frozen(clean, exact(clean, torch.ones(N, dtype=torch.bool)))
    result = UnlearningResult()
    result.posterior = full
    attach_trust(result, flat, full, (clean.x, clean.y), {}, erased=random_rows(5), plate="data")
    assert result.verdict is None and result.trust is None
    assert result.summary().startswith("not diagnosed: diagnose draws θ in a pyro.plate")
    assert set(result.trust_row) == {"verdict", *TrustDiagnostics.__dataclass_fields__}


def test_check_diagnose_options():
    assert check_diagnose_options(False, 100) == 100
    with pytest.raises(TypeError, match="diagnose must be True or False"):
        check_diagnose_options(None)
    with pytest.raises(ValueError, match="at least 100, got 99"):
        check_diagnose_options(True, 99)
    with pytest.raises(TypeError, match="diagnose_samples must be a positive integer"):
        check_diagnose_options(True, 1000.0)
