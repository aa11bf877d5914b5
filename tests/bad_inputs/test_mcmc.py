"""Bad inputs to mcmc_unlearn: each is refused with an error naming the problem before anything
runs, and the input draws and the param store are left bit-identical."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.infer.mcmc import MIN_DRAWS

NAN, INF = float("nan"), float("inf")
X = torch.linspace(-1.0, 1.0, 6)
Y = 0.5 * X


def model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def _draws(num=200):
    """Draws of p(w|D) ≈ N(0, 0.4²), the same at every call."""
    return {"w": 0.4 * torch.randn(num, generator=torch.Generator().manual_seed(0))}


def _named(arg, value, row):
    return rf"{arg} has a non-finite value \({value}\) at row {row}"


CASES = [
    # non-finite draws: the site, how many and the first
    ({"draws": {"w": _with(_draws()["w"], 7, NAN)}}, ValueError,
     r"samples\['w'\] is not finite for 1 of 200 draws \(first: draw 7, value nan\)"),
    ({"draws": {"w": _with(_with(_draws()["w"], 3, INF), 9, -INF)}}, ValueError,
     r"samples\['w'\] is not finite for 2 of 200 draws \(first: draw 3, value inf\)"),
    # non-finite data, erased or kept, and D_r for rejuvenation
    ({"x": _with(X, 2, NAN), "erased": [2]}, ValueError, _named(r"args\[0\]", "nan", 2)),
    ({"x": _with(X, 4, NAN)}, ValueError, _named(r"args\[0\]", "nan", 4)),
    ({"y": _with(Y, 0, INF)}, ValueError, _named(r"args\[1\]", "inf", 0)),
    ({"rejuvenate": {"args": (_with(X, 5, NAN), Y)}}, ValueError,
     _named(r"rejuvenate\['args'\]\[0\]", "nan", 5)),
    ({"rejuvenate": {"kwargs": {"y": _with(Y, 1, NAN)}, "args": (X,)}}, ValueError,
     _named(r"rejuvenate\['kwargs'\]\['y'\]", "nan", 1)),
    # too few draws, draws that do not match the model
    ({"draws": _draws(1)}, ValueError, r"1 draw\(s\), fewer than MIN_DRAWS = 2"),
    ({"draws": _draws(8)}, ValueError, r"8 draws, too few .* more than 1/ess_threshold = 10"),
    ({"draws": _draws(20), "ess_threshold": 0.05}, ValueError, r"more than 1/ess_threshold = 20"),
    ({"draws": {"w": torch.zeros(50, 2)}}, ValueError, r"site 'w' has shape \(\) in the model"),
    ({"draws": {"v": torch.zeros(50)}}, ValueError, r"no draws of the model's latent site"),
    ({"draws": {"w": torch.zeros(50), "y": torch.zeros(50, 6)}}, ValueError, r"observed site"),
    ({"draws": {"w": torch.zeros(50), "z": torch.zeros(40)}}, ValueError, r"same number"),
    ({"draws": "draws"}, TypeError, r"samples must be a pyro.infer.MCMC"),
    # options
    ({"ess_threshold": "a"}, TypeError, r"ess_threshold must be a number in \[0, 1\], got 'a'"),
    ({"ess_threshold": NAN}, ValueError, r"ess_threshold must be a number in \[0, 1\], got nan"),
    ({"ess_threshold": -0.1}, ValueError, r"ess_threshold must be a number in \[0, 1\]"),
    ({"num_samples": 2.5}, TypeError, r"num_samples must be a positive integer, got 2.5"),
    ({"num_samples": "5"}, TypeError, r"num_samples must be a positive integer, got '5'"),
    ({"num_samples": 0}, ValueError, r"num_samples must be a positive integer, got 0"),
    ({"chunk_size": 1.5}, TypeError, r"chunk_size must be a positive integer, got 1.5"),
    ({"chunk_size": -1}, ValueError, r"chunk_size must be a positive integer, got -1"),
    ({"seed": 1.5}, TypeError, r"seed must be an integer ≥ 0, got 1.5"),
    ({"seed": "a"}, TypeError, r"seed must be an integer ≥ 0, got 'a'"),
    ({"seed": -1}, ValueError, r"seed must be an integer ≥ 0, got -1"),
    ({"generator": "a"}, TypeError, r"generator must be a torch.Generator, got str"),
    ({"resample": "stratified"}, ValueError, r"resample must be one of"),
    ({"vectorize": True}, ValueError, r"vectorize must be one of"),
    ({"rejuvenate": {"num_moves": 1.5}}, TypeError, r"rejuvenate\['num_moves'\] must be a pos"),
    ({"rejuvenate": {"max_leapfrog": 0}}, ValueError, r"rejuvenate\['max_leapfrog'\] must be"),
    ({"rejuvenate": {"step_size": NAN}}, ValueError, r"rejuvenate\['step_size'\] must be a fin"),
    ({"rejuvenate": {"step_size": "a"}}, TypeError, r"rejuvenate\['step_size'\] must be a fin"),
    ({"rejuvenate": {"trajectory_length": 0}}, ValueError, r"rejuvenate\['trajectory_length'\]"),
    ({"rejuvenate": {"target_accept": NAN}}, ValueError, r"rejuvenate\['target_accept'\]"),
    ({"rejuvenate": {"target_accept": 1.0}}, ValueError, r"target_accept'\] must be in \(0, 1\)"),
    ({"rejuvenate": {"args": X}}, TypeError, r"rejuvenate\['args'\] must be a tuple"),
    ({"rejuvenate": {"kwargs": [X]}}, TypeError, r"rejuvenate\['kwargs'\] must be a dict"),
    ({"rejuvenate": "yes"}, TypeError, r"rejuvenate must be None, True or a dict"),
    # erased rows and plate
    ({"erased": [10]}, IndexError, r"erased index 10 is out of range for plate 'data' of size 6"),
    ({"erased": [1, 1]}, ValueError, r"duplicate indices"),
    ({"erased": []}, ValueError, r"erased is empty"),
    ({"plate": "dta"}, ValueError, r"plate 'dta' never appeared"),
    # the trust check: diagnose is a bool; the draws' own weights are diagnosed (no new draws)
    ({"diagnose": "yes"}, TypeError, r"diagnose must be True or False, got str"),
    ({"diagnose_samples": 1000}, TypeError, r"all S draws it was given \(no new draws\)"),
]  # fmt: skip
IDS = [
    "nan-draw", "inf-draws",
    "nan-x-erased", "nan-x-kept", "inf-y", "nan-remaining-args", "nan-remaining-kwargs",
    "one-draw", "eight-draws", "twenty-draws-at-0.05", "draw-shape", "unknown-site",
    "observed-site", "ragged-draws", "draws-str",
    "ess-str", "ess-nan", "ess-negative", "num-samples-float", "num-samples-str",
    "num-samples-zero", "chunk-float", "chunk-negative", "seed-float", "seed-str",
    "seed-negative", "generator-str", "resample-unknown", "vectorize-bool",
    "moves-float", "leapfrog-zero", "step-nan", "step-str", "trajectory-zero",
    "target-accept-nan", "target-accept-one", "remaining-args-tensor", "remaining-kwargs-list",
    "rejuvenate-str",
    "erased-out-of-range", "erased-duplicated", "erased-empty", "plate-unknown",
    "diagnose-str", "no-diagnose-samples",
]  # fmt: skip


@pytest.mark.parametrize("case, error, match", CASES, ids=IDS)
def test_bad_input_is_named_and_draws_are_unchanged(unchanged, case, error, match):
    case = dict(case)
    draws = case.pop("draws", None) or _draws()
    x, y = case.pop("x", X), case.pop("y", Y)
    options = {"erased": [1], "plate": "data", "seed": 0, **case}
    if "generator" in case:
        del options["seed"]
    before = {k: v.clone() for k, v in draws.items()} if isinstance(draws, dict) else None
    with unchanged(), pytest.raises(error, match=match):
        pu.mcmc_unlearn(model, draws, x, y, **options)
    for name, value in (before or {}).items():
        assert torch.equal(value.isnan(), draws[name].isnan()), name
        assert torch.equal(value.nan_to_num(), draws[name].nan_to_num()), name


def test_the_fewest_draws_allowed_run():
    draws = _draws(MIN_DRAWS)
    result = pu.mcmc_unlearn(model, draws, X, Y, erased=[1], plate="data", ess_threshold=0)
    assert result.weights.shape == (MIN_DRAWS,)
    assert torch.allclose(result.weights.sum(), torch.tensor(1.0))


def param_model(x, y):
    """The likelihood reads a pyro.param, not the latent w: log p(D_e|w) is constant in w."""
    pyro.sample("w", dist.Normal(0.0, 1.0))
    slope = pyro.param("slope", torch.tensor(0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(slope * x, 1.0), obs=y)


@pytest.mark.parametrize("vectorize", ["vmap", "plate"])
def test_a_likelihood_that_ignores_the_latents_is_refused(unchanged, vectorize):
    pyro.param("slope", torch.tensor(0.5))
    draws = _draws()
    with (
        unchanged(),
        pytest.raises(ValueError, match=r"is -\S+ at all 200 draws, which differ: .*does not dep"),
    ):
        pu.mcmc_unlearn(
            param_model, draws, X, Y, erased=[1], plate="data", seed=0, resample="systematic",
            vectorize=vectorize,
        )  # fmt: skip
    assert torch.equal(draws["w"], _draws()["w"])


def test_identical_draws_with_a_constant_likelihood_are_not_refused():
    """All draws equal (a stuck chain): equal likelihoods say nothing about the model."""
    draws = {"w": torch.full((20,), 0.3)}
    result = pu.mcmc_unlearn(model, draws, X, Y, erased=[1], plate="data", ess_threshold=0)
    assert torch.allclose(result.weights, torch.full((20,), 0.05))
