"""Bad inputs to influence_unlearn (BIF): each is refused with an error naming the problem, and
the live guide, the param store and a frozen q(θ|D) are left bit-identical, also when the
Newton step fails midway."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.infer.newton import IndefiniteHessianError

NAN, INF = float("nan"), float("inf")
X = torch.linspace(-1.0, 1.0, 6)
Y = 0.5 * X
D_E, D_R = (X[:1], Y[:1]), (X[1:], Y[1:])


def model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)


def guide(x, y):
    loc = pyro.param("loc", torch.tensor(0.3))
    scale = pyro.param("scale", torch.tensor(0.4), constraint=dist.constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale))


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


@pytest.fixture
def trained():
    guide(X, Y)
    return guide, pu.freeze(guide, X, Y)


def _named(arg, value, row):
    return rf"{arg} has a non-finite value \({value}\) at row {row}"


CASES = [
    # non-finite D_e and D_r, named as data
    ({"args": (_with(X[:1], 0, NAN), Y[:1])}, ValueError, _named(r"args\[0\]", "nan", 0)),
    ({"args": (X, _with(Y, 4, INF)), "erased": [0], "plate": "data"}, ValueError,
     _named(r"args\[1\]", "inf", 4)),
    ({"remaining": (_with(X[1:], 2, NAN), Y[1:])}, ValueError, _named(r"remaining\[0\]", "nan", 2)),
    ({"remaining": [D_R, (X[1:], _with(Y[1:], 3, -INF))]}, ValueError,
     _named(r"remaining\[1\]\[1\]", "-inf", 3)),
    # the options
    ({"num_particles": 2.5}, TypeError, r"num_particles must be a positive integer, got 2.5"),
    ({"num_particles": "8"}, TypeError, r"num_particles must be a positive integer, got '8'"),
    ({"num_particles": 0}, ValueError, r"num_particles must be a positive integer, got 0"),
    ({"num_particles": 7}, ValueError, r"num_particles must be even, got 7"),
    ({"steps": 1.0}, TypeError, r"steps must be a positive integer, got 1.0"),
    ({"steps": -1}, ValueError, r"steps must be a positive integer, got -1"),
    ({"damping": NAN}, ValueError, r"damping must be a finite number ≥ 0, got nan"),
    ({"damping": -1.0}, ValueError, r"damping must be a finite number ≥ 0, got -1"),
    ({"damping": "a"}, TypeError, r"damping must be a finite number ≥ 0, got 'a'"),
    ({"cg_tol": 0.0}, ValueError, r"cg_tol must be positive, got 0"),
    ({"cg_tol": "a"}, TypeError, r"cg_tol must be a finite number ≥ 0, got 'a'"),
    ({"cg_tol": INF}, ValueError, r"cg_tol must be a finite number ≥ 0, got inf"),
    ({"cg_max_iter": 0}, ValueError, r"cg_max_iter must be a positive integer, got 0"),
    ({"cg_max_iter": 2.5}, TypeError, r"cg_max_iter must be a positive integer, got 2.5"),
    ({"solver": "lissa", "lissa_scale": -1.0}, ValueError, r"lissa_scale must be a finite nu"),
    ({"solver": "lissa", "lissa_depth": 0}, ValueError, r"lissa_depth must be a positive int"),
    ({"solver": "newton"}, ValueError, r"solver must be one of \('cg', 'lissa'\)"),
    ({"seed": 1.5}, TypeError, r"seed must be an integer ≥ 0, got 1.5"),
    ({"seed": "a"}, TypeError, r"seed must be an integer ≥ 0, got 'a'"),
    ({"seed": -1}, ValueError, r"seed must be an integer ≥ 0, got -1"),
    # D_r and the erased rows
    ({"remaining": []}, ValueError, r"remaining holds no mini-batch"),
    ({"remaining": X[1:]}, TypeError, r"remaining must be D_r as the model's arguments"),
    ({"remaining": iter([D_R])}, TypeError, r"one-shot iterator"),
    ({"remaining": [X[1:]]}, TypeError, r"each mini-batch of remaining must be a tuple"),
    ({"args": ()}, ValueError, r"pass D_e"),
    ({"args": (X, Y), "erased": [10], "plate": "data"}, IndexError, r"erased index 10 is out"),
    ({"args": (X, Y), "erased": [1, 1], "plate": "data"}, ValueError, r"duplicate indices"),
    ({"args": (X, Y), "erased": [], "plate": "data"}, ValueError, r"erased is empty"),
    ({"args": (X, Y), "erased": [1], "plate": "dta"}, ValueError, r"plate 'dta' never appeared"),
    # the trust check's options
    ({"diagnose_samples": 99}, ValueError, r"diagnose_samples must be at least 100, got 99"),
    ({"diagnose_samples": 1e3}, TypeError, r"diagnose_samples must be a positive integer"),
    ({"diagnose": 1}, TypeError, r"diagnose must be True or False, got int"),
]  # fmt: skip
IDS = [
    "nan-erased", "inf-erased-row", "nan-remaining", "inf-remaining-batch",
    "particles-float", "particles-str", "particles-zero", "particles-odd", "steps-float",
    "steps-negative", "damping-nan", "damping-negative", "damping-str", "cg-tol-zero",
    "cg-tol-str", "cg-tol-inf", "cg-max-iter-zero", "cg-max-iter-float", "lissa-scale-negative",
    "lissa-depth-zero", "solver-unknown", "seed-float", "seed-str", "seed-negative",
    "remaining-empty", "remaining-tensor", "remaining-iterator", "remaining-batch-tensor",
    "no-erased-data", "erased-out-of-range", "erased-duplicated", "erased-empty", "plate-unknown",
    "diagnose-samples-few", "diagnose-samples-float", "diagnose-int",
]  # fmt: skip


@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
@pytest.mark.parametrize("case, error, match", CASES, ids=IDS)
def test_bad_input_is_named_and_nothing_changes(trained, unchanged, frozen, case, error, match):
    live, posterior = trained
    case = dict(case)
    args = case.pop("args", D_E)
    options = {"remaining": D_R, "progress": False, "num_particles": 8, "seed": 0, **case}
    with unchanged(live, posterior), pytest.raises(error, match=match):
        pu.influence_unlearn(model, posterior if frozen else live, *args, **options)


def test_an_untrained_guide_is_refused(trained, unchanged):
    live, posterior = trained
    with unchanged(live, posterior), pytest.raises(ValueError, match="never been run"):
        pu.influence_unlearn(model, AutoNormal(model), *D_E, remaining=D_R, progress=False)


def square_model(y):
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(w**2, 0.1), obs=y)


def test_a_newton_step_that_fails_midway_changes_nothing(unchanged):
    # at w ≈ 0 with y = 4, −log p(y|w) = (w² − 4)² / 0.02 curves downwards: H_r is indefinite
    y = torch.full((3,), 4.0)
    guide = AutoNormal(square_model, init_loc_fn=lambda site: torch.tensor(0.0), init_scale=0.01)
    guide(y)
    posterior = pu.freeze(guide, y)
    with (
        unchanged(guide, posterior),
        pytest.raises(IndefiniteHessianError, match="not positive definite"),
    ):
        pu.influence_unlearn(square_model, guide, y[:1], remaining=(y[1:],), progress=False)


def param_model(x, y):
    """The likelihood reads a pyro.param, not the latent w: ∇_w log p(D_e|w) = 0."""
    pyro.sample("w", dist.Normal(0.0, 1.0))
    slope = pyro.param("slope", torch.tensor(0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(slope * x, 1.0), obs=y)


@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
def test_a_likelihood_that_ignores_the_latents_is_refused(trained, unchanged, frozen):
    live, posterior = trained
    pyro.param("slope", torch.tensor(0.5))
    with (
        unchanged(live, posterior),
        pytest.raises(ValueError, match=r"no gradient with respect to the sampled.*does not dep"),
    ):
        pu.influence_unlearn(
            param_model, posterior if frozen else live, *D_E, remaining=D_R, progress=False,
            num_particles=8, seed=0,
        )  # fmt: skip
