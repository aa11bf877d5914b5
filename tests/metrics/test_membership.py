import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_unlearn.metrics import (
    loss_and_entropy,
    membership_attack,
    membership_inference,
    per_example_loss,
)
from pyro_unlearn.metrics._classifiers import fit_logistic, fit_threshold, stratified_folds

from .models import logistic, point_mass, scalar_regression


def mann_whitney(member_losses, nonmember_losses):
    """P(ℓ_member < ℓ_non-member) + ½ P(tie), by brute force over all pairs."""
    diff = nonmember_losses.unsqueeze(0) - member_losses.unsqueeze(1)
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_membership_attack_is_at_chance_on_identical_loss_distributions():
    torch.manual_seed(0)
    members, nonmembers = torch.randn(600).exp(), torch.randn(900).exp()
    entropy = (torch.rand(600), torch.rand(900))
    attack = membership_attack(members, nonmembers, features=entropy, repeats=2)
    # a balanced sample of 2 × 600, held-out folds: accuracy's sd ≈ 0.015, the AUC's ≈ 0.015
    for value in (attack.threshold_accuracy, attack.logistic_accuracy):
        assert abs(value - 0.5) < 0.05
    for value in (attack.threshold_auc, attack.logistic_auc):
        assert abs(value - 0.5) < 0.05
    assert (attack.num_members, attack.num_nonmembers, attack.num_balanced) == (600, 900, 600)
    assert set(attack.columns()) == {
        "mia_accuracy",
        "mia_auc",
        "mia_logistic_accuracy",
        "mia_logistic_auc",
    }


def test_membership_attack_separated_losses_in_either_direction():
    members, nonmembers = torch.rand(30), 2 + torch.rand(45)  # members: every loss lower
    attack = membership_attack(members, nonmembers)
    assert attack.threshold_accuracy == attack.threshold_auc == 1.0
    assert attack.logistic_accuracy == attack.logistic_auc == 1.0
    # members with higher losses (over-unlearning): AUC 0, and both attacks still see it
    attack = membership_attack(nonmembers, members)
    assert attack.threshold_auc == 0.0
    assert attack.threshold_accuracy == attack.logistic_accuracy == 1.0
    # an uninformative loss with a separating extra feature: only the logistic attack uses it
    same = torch.ones(40)
    features = (torch.zeros(40, 1), torch.ones(40, 1))
    attack = membership_attack(same, same, features=features)
    assert attack.threshold_accuracy == attack.threshold_auc == 0.5
    assert attack.logistic_accuracy == 1.0


def test_membership_attack_auc_is_the_mann_whitney_statistic():
    torch.manual_seed(1)
    members = torch.randint(0, 6, (37,)).double()  # integer losses: many ties
    nonmembers = torch.randint(1, 8, (23,)).double()
    attack = membership_attack(members, nonmembers)
    assert attack.threshold_auc == pytest.approx(mann_whitney(members, nonmembers), abs=1e-12)
    assert 0.5 < attack.threshold_auc < 1.0  # members lower, not separated


def test_fit_threshold_maximises_the_training_accuracy():
    torch.manual_seed(2)
    score = torch.randn(25).double().numpy()
    member = (torch.rand(25) < 0.5).double().numpy()
    tau, direction = fit_threshold(score, member)
    best = max(  # brute force over every threshold between (and beyond) the sorted scores
        float(((d * (score - t) > 0) == member).mean())
        for t in [-math.inf, *score.tolist()]
        for d in (1.0, -1.0)
    )
    assert float(((direction * (score - tau) > 0) == member).mean()) == best


def test_membership_attack_errors():
    ok = torch.arange(10.0)
    with pytest.raises(ValueError, match="member_losses is empty"):
        membership_attack(torch.tensor([]), ok)
    with pytest.raises(ValueError, match="nonmember_losses is empty"):
        membership_attack(ok, torch.tensor([]))
    with pytest.raises(ValueError, match=r"member_losses must have 1 dim.*\(5, 2\)"):
        membership_attack(ok.reshape(5, 2), ok)
    with pytest.raises(ValueError, match="nonmember_losses holds 1 non-finite"):
        membership_attack(ok, torch.cat([ok, torch.tensor([math.nan])]))
    with pytest.raises(ValueError, match="member features have 9 rows but there are 10"):
        membership_attack(ok, ok, features=(torch.zeros(9), torch.zeros(10)))
    with pytest.raises(ValueError, match="2 columns, nonmember features 1"):
        membership_attack(ok, ok, features=(torch.zeros(10, 2), torch.zeros(10)))
    with pytest.raises(ValueError, match="features must be a pair"):
        membership_attack(ok, ok, features=torch.zeros(10))
    with pytest.raises(ValueError, match="at least 5 examples in each group; got 10 members and 4"):
        membership_attack(ok, ok[:4])
    with pytest.raises(ValueError, match="folds must be an integer of at least 2"):
        membership_attack(ok, ok, folds=1)
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        membership_attack(ok, ok, repeats=0)


def conjugate_normal(y=None, sigma=0.5):
    """y_n ~ N(μ, σ²), μ ~ N(0, 10²)."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
    with pyro.plate("data", len(y)):
        return pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_per_example_loss_conjugate_normal():
    y = torch.tensor([-1.0, 0.2, 0.9, 2.5], dtype=torch.float64)
    m, s, sigma = 0.3, 0.8, 0.5

    def point(y=None):
        pyro.sample("mu", dist.Delta(y.new_tensor(m)))

    def gaussian(y=None):
        pyro.sample("mu", dist.Normal(y.new_tensor(m), s))

    # a point mass: −log N(y | m, σ²) exactly, whatever the number of samples
    loss = per_example_loss(conjugate_normal, point, y, num_samples=3)
    assert torch.allclose(loss, -dist.Normal(m, sigma).log_prob(y), atol=1e-12)
    # a Gaussian posterior N(m, s²): E_q[p(y|μ)] = N(y | m, σ² + s²)
    num = 40_000
    loss = per_example_loss(conjugate_normal, gaussian, y, num_samples=num)
    exact = -dist.Normal(m, math.sqrt(sigma**2 + s**2)).log_prob(y)
    assert loss.shape == (4,) and loss.dtype == torch.float64
    # the Monte-Carlo error's sd: Var[p]/E[p]², with E_q[p(y|μ)²] = N(y | m, σ²/2 + s²)/(2σ√π)
    second = dist.Normal(m, math.sqrt(sigma**2 / 2 + s**2)).log_prob(y).exp() / (
        2 * sigma * math.sqrt(math.pi)
    )
    sd = ((second / (-2 * exact).exp() - 1) / num).sqrt()
    assert ((loss - exact).abs() < 5 * sd).all() and sd.max() < 0.02
    with pytest.raises(ValueError, match="observed values of site 'y'"):
        per_example_loss(logistic, point_mass(w=1.0), torch.ones(3))


def test_per_example_loss_scores_event_dims_jointly():
    def model(y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 2):
            return pyro.sample("y", dist.Normal(mu, 1.0).expand([2, 3]).to_event(1), obs=y)

    def guide(y=None):
        pyro.sample("mu", dist.Delta(torch.tensor(1.0)))

    y = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    loss = per_example_loss(model, guide, y, num_samples=2)
    expected = -dist.Normal(1.0, 1.0).log_prob(y).sum(-1)  # one loss per example (row)
    assert loss.shape == (2,) and torch.allclose(loss, expected, atol=1e-6)


def test_membership_inference_on_posteriors():
    x = torch.linspace(-2.0, 2.0, 20)
    seen = (x, (x > 0).float())  # the labels a positive weight predicts
    unseen = (x, (x < 0).float())  # the opposite labels
    posteriors = {"fit": point_mass(w=3.0), "flat": point_mass(w=0.0)}
    attacks = membership_inference(logistic, posteriors, seen, unseen, entropy=True)
    assert list(attacks) == ["fit", "flat"]
    assert attacks["fit"].threshold_auc == attacks["fit"].threshold_accuracy == 1.0
    # w = 0 predicts ½ everywhere: every loss is log 2, nothing to tell
    assert attacks["flat"].threshold_auc == attacks["flat"].threshold_accuracy == 0.5
    assert attacks["flat"].logistic_accuracy == 0.5
    # the same numbers as the attack on the per-example losses directly
    loss_seen = per_example_loss(logistic, posteriors["fit"], *seen)
    loss_unseen = per_example_loss(logistic, posteriors["fit"], *unseen)
    assert torch.allclose(loss_seen, torch.nn.functional.softplus(-3.0 * x.abs()), atol=1e-6)
    direct = membership_attack(loss_seen, loss_unseen)
    assert attacks["fit"].threshold_auc == direct.threshold_auc
    with pytest.raises(TypeError, match="predictive entropy feature needs a Bernoulli"):
        membership_inference(
            scalar_regression, {"q": point_mass(w=1.0, s=1.0)}, (x, x), (x, x), entropy=True
        )
    with pytest.raises(ValueError, match="posteriors is empty"):
        membership_inference(logistic, {}, seen, unseen)


def test_loss_and_entropy_from_class_log_probabilities():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]], dtype=torch.float64)
    loss, entropy = loss_and_entropy(probs.log(), torch.tensor([2.0, 1.0]))
    assert torch.allclose(loss, -torch.tensor([0.5, 0.05], dtype=torch.float64).log())
    assert torch.allclose(entropy, torch.distributions.Categorical(probs=probs).entropy())


# -- the attackers' numerics ----------------------------------------------------------------------
def test_fit_logistic_is_the_penalised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    y = (x @ np.array([1.5, -0.5]) + 0.3 + rng.normal(size=60) > 0).astype(float)
    w, b = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    # stationary: the log-loss gradient balances the penalty on w; the intercept is free
    assert np.allclose(x.T @ (p - y) + w, 0, atol=1e-8) and abs((p - y).sum()) < 1e-8
    # separable data: the penalty keeps the optimum finite
    w, b = fit_logistic(np.array([[-2.0], [-1.0], [1.0], [2.0]]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert np.isfinite([*w, b]).all() and w[0] > 0


def test_fit_logistic_agrees_with_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] - x[:, 2] + rng.normal(size=80) > 0).astype(float)
    w, b = fit_logistic(x, y)
    fitted = linear_model.LogisticRegression(tol=1e-10).fit(x, y)
    assert np.allclose(w, fitted.coef_[0], atol=1e-6) and b == pytest.approx(fitted.intercept_[0])


@pytest.mark.parametrize("size, folds", [(10, 5), (13, 3), (7, 2), (40, 6)])
def test_stratified_folds_are_scikit_learns_split(size, folds):
    fold_of = stratified_folds(size, folds, seed=3)
    for fold in range(folds):  # each group dealt evenly over the folds
        counts = [(fold_of[g * size : (g + 1) * size] == fold).sum() for g in (0, 1)]
        assert all(c in (size // folds, -(-size // folds)) for c in counts)
    model_selection = pytest.importorskip("sklearn.model_selection")
    member = np.concatenate([np.ones(size), np.zeros(size)])
    split = model_selection.StratifiedKFold(folds, shuffle=True, random_state=3)
    for fold, (_, test) in enumerate(split.split(member[:, None], member)):
        assert np.array_equal(np.flatnonzero(fold_of == fold), test)


def test_membership_attack_needs_no_scikit_learn(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # any import of it now fails
    attack = membership_attack(torch.arange(10.0), torch.arange(10.0) + 20)
    assert attack.logistic_accuracy == attack.logistic_auc == 1.0
