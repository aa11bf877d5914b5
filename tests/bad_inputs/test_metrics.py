"""Bad inputs to the metrics: each refused with an error that names it, and the frozen
posteriors, the live guides and the param store bit-identical afterwards."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu
from tests.metrics.models import logistic, regression

M = pu.metrics
NAN, INF = float("nan"), float("inf")


def _with(value, row, entry):
    value = value.clone()
    value[row] = entry
    return value


@pytest.fixture
def fitted():
    """Two frozen posteriors of the logistic model, one of the regression model, their data."""
    torch.manual_seed(0)
    x = torch.randn(8)
    y = (x > 0).float()
    posteriors = []
    for model, args in ((logistic, (x, y)), (logistic, (x, y))):
        pyro.clear_param_store()
        guide = AutoNormal(model)
        guide(*args)
        posteriors.append(pu.freeze(guide, *args))
    pyro.clear_param_store()
    x_r = torch.randn(8, 2)
    guide = AutoNormal(regression)
    guide(x_r, x_r.sum(-1))
    other = pu.freeze(guide, x_r, x_r.sum(-1))
    return posteriors[0], posteriors[1], other, guide, x, y, x_r


CASES = [
    # non-finite data, named by argument and row
    (
        "kl-nan-x",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, _with(x, 3, NAN), site="y"),
        ValueError,
        r"args\[0\] has a non-finite value \(nan\) at row 3",
    ),
    (
        "accuracy-nan-y",
        lambda p, q, o, x, y: M.accuracy(logistic, p, x, _with(y, 2, NAN), site="y"),
        ValueError,
        r"args\[1\] has a non-finite value \(nan\) at row 2",
    ),
    (
        "lpd-inf-x",
        lambda p, q, o, x, y: M.log_predictive_density(logistic, p, _with(x, 0, INF), y, site="y"),
        ValueError,
        r"args\[0\] has a non-finite value \(inf\) at row 0",
    ),
    (
        "loss-nan-y",
        lambda p, q, o, x, y: M.per_example_loss(logistic, p, x, _with(y, 5, NAN), site="y"),
        ValueError,
        r"args\[1\] .* at row 5",
    ),
    (
        "distribution-nan-x",
        lambda p, q, o, x, y: M.predictive_distribution(logistic, p, _with(x, 1, NAN), site="y"),
        ValueError,
        r"args\[0\] .* at row 1",
    ),
    (
        "inference-nan",
        lambda p, q, o, x, y: M.membership_inference(
            logistic, {"p": p}, (x, _with(y, 2, NAN)), (x, y), folds=2
        ),
        ValueError,
        r"args\[1\] .* row 2",
    ),
    # num_samples and friends
    (
        "kl-num-samples-0",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, x, site="y", num_samples=0),
        ValueError,
        "num_samples must be a positive integer",
    ),
    (
        "kl-num-samples-float",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, x, site="y", num_samples=2.5),
        TypeError,
        "num_samples must be a positive integer",
    ),
    (
        "kl-num-samples-str",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, x, site="y", num_samples="5"),
        TypeError,
        "num_samples must be a positive integer",
    ),
    (
        "kl-num-y-samples-float",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, x, site="y", num_y_samples=2.5),
        TypeError,
        "num_y_samples must be a positive integer",
    ),
    (
        "accuracy-num-samples-0",
        lambda p, q, o, x, y: M.accuracy(logistic, p, x, y, site="y", num_samples=0),
        ValueError,
        "num_samples must be",
    ),
    (
        "param-kl-num-samples-float",
        lambda p, q, o, x, y: M.param_kl(p, q, x, y, method="monte_carlo", num_samples=2.5),
        TypeError,
        "num_samples must be",
    ),
    (
        "inference-data-num-samples-0",
        lambda p, q, o, x, y: M.to_inference_data({"p": p}, logistic, x, num_samples=0),
        ValueError,
        "num_samples must be",
    ),
    # site names
    (
        "site-unknown",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, x, site="z"),
        ValueError,
        "no sample site 'z'",
    ),
    (
        "site-latent",
        lambda p, q, o, x, y: M.accuracy(logistic, p, x, y, site="w"),
        ValueError,
        "'w' is a latent site",
    ),
    (
        "site-not-str",
        lambda p, q, o, x, y: M.log_predictive_density(logistic, p, x, y, site=3),
        TypeError,
        "site must be the name",
    ),
    # posteriors of the wrong model, or none
    (
        "kl-other-model",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, o, x, site="y"),
        ValueError,
        r"posterior's site 'w' has shape \(2,\), the model's \(\)",
    ),
    (
        "lpd-other-model",
        lambda p, q, o, x, y: M.log_predictive_density(logistic, o, x, y, site="y"),
        ValueError,
        "is it a posterior of this model",
    ),
    (
        "param-kl-other-model",
        lambda p, q, o, x, y: M.param_kl(p, o, x, y),
        ValueError,
        "different auxiliary sites",
    ),
    (
        "param-kl-not-a-guide",
        lambda p, q, o, x, y: M.param_kl(p, "q"),
        TypeError,
        "q must be a posterior",
    ),
    (
        "inference-no-posteriors",
        lambda p, q, o, x, y: M.membership_inference(logistic, {}, (x, y), (x, y)),
        ValueError,
        "posteriors is empty",
    ),
    (
        "inference-data-no-posteriors",
        lambda p, q, o, x, y: M.to_inference_data({}, logistic, x),
        ValueError,
        "posteriors is empty",
    ),
    (
        "inference-members-not-a-tuple",
        lambda p, q, o, x, y: M.membership_inference(logistic, {"p": p}, x, (x, y)),
        TypeError,
        "members must be the model's arguments",
    ),
    # empty and mismatched inputs
    (
        "kl-empty",
        lambda p, q, o, x, y: M.predictive_kl(logistic, p, q, x[:0], site="y"),
        ValueError,
        "plate of size 0.*the data are empty",
    ),
    (
        "accuracy-empty",
        lambda p, q, o, x, y: M.accuracy(logistic, p, x[:0], y[:0], site="y"),
        ValueError,
        "the data are empty",
    ),
    (
        "accuracy-short-y",
        lambda p, q, o, x, y: M.accuracy(logistic, p, x, y[:5], site="y"),
        ValueError,
        r"observed 'y' has shape \(5,\), the site's points \(8,\)",
    ),
    (
        "accuracy-not-observed",
        lambda p, q, o, x, y: M.accuracy(logistic, p, x, site="y"),
        ValueError,
        "observed values of site 'y'",
    ),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_predictive_metrics_name_bad_inputs(fitted, unchanged, call, error, match):
    p, q, other, guide, x, y, _ = fitted
    with unchanged(p, q, other, guide), pytest.raises(error, match=match):
        call(p, q, other, x, y)


MEMBERSHIP = [
    (
        "nan-member",
        lambda a, b: M.membership_attack(_with(a, 4, NAN), b),
        ValueError,
        r"member_losses holds 1 non-finite .* at row 4 \(nan\)",
    ),
    (
        "inf-nonmember",
        lambda a, b: M.membership_attack(a, _with(b, 7, INF)),
        ValueError,
        r"nonmember_losses .* at row 7 \(inf\)",
    ),
    ("empty", lambda a, b: M.membership_attack(a[:0], b), ValueError, "member_losses is empty"),
    ("2-d", lambda a, b: M.membership_attack(a.reshape(4, 5), b), ValueError, "1 dim"),
    ("folds-1", lambda a, b: M.membership_attack(a, b, folds=1), ValueError, "folds must be"),
    ("folds-float", lambda a, b: M.membership_attack(a, b, folds=2.5), ValueError, "folds must"),
    ("folds-bool", lambda a, b: M.membership_attack(a, b, folds=True), ValueError, "folds must"),
    (
        "folds-above-group",
        lambda a, b: M.membership_attack(a, b, folds=30),
        ValueError,
        "at least 30 examples in each group",
    ),
    ("repeats-0", lambda a, b: M.membership_attack(a, b, repeats=0), ValueError, "repeats must"),
    ("seed-negative", lambda a, b: M.membership_attack(a, b, seed=-1), ValueError, "seed must"),
    ("seed-float", lambda a, b: M.membership_attack(a, b, seed=1.5), TypeError, "seed must"),
    (
        "features-rows",
        lambda a, b: M.membership_attack(a, b, features=(torch.rand(19, 2), torch.rand(20, 2))),
        ValueError,
        "member features have 19 rows but there are 20",
    ),
    (
        "features-nan",
        lambda a, b: M.membership_attack(
            a, b, features=(_with(torch.rand(20, 2), 3, NAN), torch.rand(20, 2))
        ),
        ValueError,
        "member features .* row 3",
    ),
    (
        "features-not-a-pair",
        lambda a, b: M.membership_attack(a, b, features=torch.rand(20, 2)),
        ValueError,
        "features must be a pair",
    ),
]


@pytest.mark.parametrize(
    "call, error, match", [c[1:] for c in MEMBERSHIP], ids=[c[0] for c in MEMBERSHIP]
)
def test_membership_attack_names_bad_inputs(call, error, match):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(20, generator=g), torch.rand(20, generator=g)
    before = (a.clone(), b.clone())
    with pytest.raises(error, match=match):
        call(a, b)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


GAUSSIANS = [
    (
        "dimensions",
        (torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)),
        "dimension 2, q 3",
    ),
    (
        "nan-loc",
        (_with(torch.zeros(2), 1, NAN), torch.eye(2), torch.zeros(2), torch.eye(2)),
        r"loc_p has a non-finite value \(nan\) at row 1",
    ),
    (
        "not-pd",
        (torch.zeros(2), torch.eye(2), torch.zeros(2), -torch.eye(2)),
        "cov_q is not positive definite",
    ),
    (
        "cov-shape",
        (torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)),
        r"\(\.\.\., d, d\)",
    ),
]


@pytest.mark.parametrize("args, match", [c[1:] for c in GAUSSIANS], ids=[c[0] for c in GAUSSIANS])
def test_gaussian_kl_names_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        M.gaussian_kl(*args)


@pytest.mark.parametrize(
    "mean, sd, nodes, error, match",
    [
        (torch.full((3,), NAN), torch.ones(3), 20, ValueError, r"mean has .*\(nan\) at row 0"),
        (torch.zeros(3), -torch.ones(3), 20, ValueError, "sd must be ≥ 0"),
        (torch.zeros(3), torch.ones(3), 2.5, TypeError, "num_nodes must be an integer"),
    ],
    ids=["nan-mean", "negative-sd", "fractional-nodes"],
)
def test_logistic_log_predictive_names_bad_inputs(mean, sd, nodes, error, match):
    with pytest.raises(error, match=match):
        M.logistic_log_predictive(mean, sd, nodes)
