"""Bad inputs to laplace_unlearn (L-BUN): each is refused with an error naming the problem, and
the live guide, the param store and a frozen q(θ|D) are left bit-identical."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.exact import NotNormalizableError

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


@pytest.fixture
def trained():
    guide = AutoMultivariateNormal(model, init_scale=0.3)
    guide(X, Y)
    return guide, pu.freeze(guide)


OPTIONS = [
    ({"retention": "big"}, TypeError, r"retention must be a finite number > 0, got 'big'"),
    ({"retention": NAN}, ValueError, r"retention \(λ_L\) must be a positive finite number"),
    ({"retention": -1.0}, ValueError, r"retention \(λ_L\) must be a positive finite number"),
    ({"retention": INF}, ValueError, r"retention \(λ_L\) must be a positive finite number"),
    ({"steps": 2.5}, TypeError, r"steps must be a positive integer, got 2.5"),
    ({"steps": "3"}, TypeError, r"steps must be a positive integer, got '3'"),
    ({"steps": 0}, ValueError, r"steps must be a positive integer, got 0"),
    ({"steps": True}, TypeError, r"steps must be a positive integer"),
    ({"chunk_size": 0.5}, TypeError, r"chunk_size must be a positive integer"),
    ({"chunk_size": -4}, ValueError, r"chunk_size must be a positive integer, got -4"),
    ({"tol": -1.0}, ValueError, r"tol must be a finite number > 0, got -1"),
    ({"tol": NAN}, ValueError, r"tol must be a finite number > 0, got nan"),
    ({"tol": "small"}, TypeError, r"tol must be a finite number > 0"),
    ({"repair": "clip", "floor": "a"}, TypeError, r"floor must be a finite number > 0"),
    ({"repair": "clip", "floor": 0.0}, ValueError, r"floor must be a finite number > 0"),
    ({"curvature": "diag", "probes": 2.5}, TypeError, r"probes must be a positive integer"),
    ({"curvature": "diag", "probes": 0}, ValueError, r"probes must be a positive integer"),
    ({"curvature": "full", "probes": 4}, ValueError, r"probes .* is for curvature='diag'"),
    ({"curvature": "kfac"}, ValueError, r"curvature must be one of"),
    ({"repair": True}, ValueError, r"repair must be None or 'clip'"),
    # the erased rows and the plate
    ({"erased": [10]}, IndexError, r"erased index 10 is out of range for plate 'data' of size 6"),
    ({"erased": [1, 1]}, ValueError, r"duplicate indices"),
    ({"erased": []}, ValueError, r"erased is empty: there is nothing to erase"),
    ({"erased": [-1]}, ValueError, r"negative indices"),
    ({"plate": "dta"}, ValueError, r"plate 'dta' never appeared"),
    # the trust check's options
    ({"diagnose_samples": 50}, ValueError, r"diagnose_samples must be at least 100, got 50"),
    ({"diagnose_samples": 500.5}, TypeError, r"diagnose_samples must be a positive integer"),
    ({"diagnose_samples": 0}, ValueError, r"diagnose_samples must be a positive integer, got 0"),
    ({"diagnose": "yes"}, TypeError, r"diagnose must be True or False, got str"),
]


@pytest.mark.parametrize("frozen", [False, True], ids=["live", "frozen"])
@pytest.mark.parametrize(
    "options, error, match", OPTIONS, ids=[str(o[0]).strip("{}") for o in OPTIONS]
)
def test_bad_option_is_named_before_anything_runs(
    trained, unchanged, frozen, options, error, match
):
    guide, posterior = trained
    kwargs = {"erased": [1], "plate": "data", **options}
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.laplace_unlearn(model, posterior if frozen else guide, X, Y, **kwargs)


def _named(arg: int, value: str, row: int) -> str:
    return rf"args\[{arg}\] has a non-finite value \({value}\) at row {row}"


PLATE = {"plate": "data"}
DATA = [
    ((_with(X, 2, NAN), Y), {"erased": [2], **PLATE}, _named(0, "nan", 2)),
    ((_with(X, 4, NAN), Y), {"erased": [1], **PLATE}, _named(0, "nan", 4)),
    ((X, _with(Y, 3, INF)), {"erased": [3], **PLATE}, _named(1, "inf", 3)),
    ((X[:2], _with(Y[:2], 1, -INF)), {}, _named(1, "-inf", 1)),
]


@pytest.mark.parametrize(
    "data, options, match", DATA, ids=["nan-x-erased", "nan-x-kept", "inf-y", "erased-only"]
)
def test_non_finite_data_are_named_as_data(trained, unchanged, data, options, match):
    guide, posterior = trained
    with unchanged(guide, posterior), pytest.raises(ValueError, match=match):
        pu.laplace_unlearn(model, guide, *data, **options)


def test_non_finite_q_is_named(unchanged):
    guide = AutoNormal(model)
    guide(X, Y)
    with torch.no_grad():
        pyro.param("AutoNormal.locs.w").fill_(NAN)
    with (
        unchanged(guide),
        pytest.raises(ValueError, match=r"mean μ_D of q\(θ\|D\) has a non-finite value \(nan\)"),
    ):
        pu.laplace_unlearn(model, guide, X, Y, erased=[1], plate="data", curvature="diag")


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: AutoDelta(model), TypeError, r"needs a AutoMultivariateNormal .* got AutoDelta"),
        (lambda: AutoMultivariateNormal(model), ValueError, r"has never been run"),
        (lambda: 3, TypeError, r"got int"),
    ],
    ids=["delta-guide", "untrained", "not-a-guide"],
)
def test_unsupported_or_untrained_guides_are_refused(trained, unchanged, make, error, match):
    live, posterior = trained
    guide = make()
    if isinstance(guide, AutoDelta):
        guide(X, Y)
    with unchanged(live, posterior), pytest.raises(error, match=match):
        pu.laplace_unlearn(model, guide, X, Y, erased=[1], plate="data")


def test_a_search_that_fails_midway_leaves_everything_unchanged(unchanged):
    # q(θ|D) = N(0, 1) holds far less than the erased points' curvature Σ x² / σ² = 16
    guide = AutoMultivariateNormal(model, init_scale=1.0)
    x = torch.full((4,), 2.0)
    guide(x, x)
    posterior = pu.freeze(guide)
    with unchanged(guide, posterior), pytest.raises(NotNormalizableError, match="no maximum"):
        pu.laplace_unlearn(model, posterior, x, x)


def param_model(x, y):
    """The likelihood reads a pyro.param, not the latent w: log p(D_e|w) is constant in w."""
    pyro.sample("w", dist.Normal(0.0, 1.0))
    slope = pyro.param("slope", torch.tensor(0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(slope * x, 1.0), obs=y)


def test_a_likelihood_that_ignores_the_latents_is_refused(unchanged):
    guide = AutoMultivariateNormal(param_model, init_scale=0.3)
    guide(X, Y)
    posterior = pu.freeze(guide, X, Y)
    with (
        unchanged(guide, posterior),
        pytest.raises(ValueError, match=r"no gradient with respect to θ.*does not depend on"),
    ):
        pu.laplace_unlearn(param_model, guide, X, Y, erased=[1], plate="data")


def test_a_likelihood_flat_at_the_mean_only_is_accepted():
    """A zero gradient at μ_D alone (the erased point fits μ_D exactly) is no reason to refuse."""
    guide = AutoMultivariateNormal(model, init_loc_fn=lambda site: torch.tensor(0.0))
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    guide(x, y)
    result = pu.laplace_unlearn(model, guide, x, y, erased=[1], plate="data")
    assert result.min_eigenvalue > 0
