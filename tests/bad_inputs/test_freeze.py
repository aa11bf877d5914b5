"""pu.freeze refuses what cannot be q(θ|D), naming why, and changes nothing."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

import pyro_unlearn as pu

Y = torch.tensor([0.8, 1.1, 1.4])


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture
def guide():
    guide = AutoNormal(model)
    guide(Y)
    return guide


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(mode_samples=0), ValueError, "mode_samples must be a positive integer"),
        (dict(mode_samples=2.5), TypeError, "mode_samples must be a positive integer"),
        (dict(mode_starts=-1), ValueError, "mode_starts must be a positive integer"),
        (dict(mode_steps="10"), TypeError, "mode_steps must be a positive integer"),
        (dict(mode_lr=0.0), ValueError, "mode_lr must be a finite number > 0"),
        (dict(mode_lr=float("nan")), ValueError, "mode_lr must be a finite number > 0"),
        (dict(mode_samples=5, mode_starts=10), ValueError, "must not exceed mode_samples"),
    ],
    ids=["samples-0", "samples-float", "starts-negative", "steps-string", "lr-0", "lr-nan",
         "starts-over-samples"],
)  # fmt: skip
def test_bad_mode_search_options(guide, unchanged, options, error, match):
    with unchanged(guide), pytest.raises(error, match=match):
        pu.freeze(guide, **options)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_guide_arguments_are_named(guide, unchanged, bad):
    y = Y.clone()
    y[2] = bad
    with unchanged(guide), pytest.raises(ValueError, match=r"args\[0\] has a non-finite .* row 2"):
        pu.freeze(guide, y)


def test_a_guide_with_non_finite_parameters_is_refused(guide, unchanged):
    with torch.no_grad():
        dict(pyro.get_param_store().named_parameters())["AutoNormal.locs.mu"].fill_(float("nan"))
    with unchanged(guide), pytest.raises(ValueError, match="'AutoNormal.locs.mu.*' is not finite"):
        pu.freeze(guide)


def test_a_point_mass_has_no_density_to_divide(unchanged):
    delta = AutoDelta(model)
    delta(Y)
    with unchanged(delta), pytest.raises(TypeError, match="site 'mu' .* point mass"):
        pu.freeze(delta)
    with unchanged(delta), pytest.raises(TypeError, match="point mass"):
        pu.forget(model, delta, Y, num_steps=2, progress=False)


@pytest.mark.parametrize("bad", [None, 3, "guide"], ids=["none", "int", "string"])
def test_not_a_guide(unchanged, bad):
    with unchanged(), pytest.raises(TypeError, match="freeze expects a guide"):
        pu.freeze(bad)


def guide_function(y):
    loc = pyro.param("loc", torch.tensor(1.0))
    pyro.sample("mu", dist.Normal(loc, 1.0))


class ModuleGuide(pyro.nn.PyroModule):
    def forward(self, y, weights):
        pyro.sample("mu", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "guide, args, kwargs, match",
    [
        (guide_function, (), {}, r"it needs \['y'\].*pu.freeze\(guide_function, y\)"),
        (guide_function, (Y, Y), {}, r"too many.*pu.freeze\(guide_function, y\)"),
        (guide_function, (), {"data": Y}, r"it needs \['y'\].*pu.freeze\(guide_function, y\)"),
        (ModuleGuide(), (Y,), {}, r"it needs \['weights'\].*pu.freeze\(ModuleGuide, y, weights\)"),
    ],
    ids=["function-no-data", "function-too-many", "function-wrong-keyword", "module-missing-one"],
)
def test_a_guide_not_given_its_arguments_is_named_what_to_pass(
    unchanged, guide, args, kwargs, match
):
    """Pyro's coin tutorial writes ``def guide(data)``: freeze(guide) names the data to pass
    instead of failing with the guide's own TypeError."""
    guide_function(Y)
    with unchanged(), pytest.raises(TypeError, match=match):
        pu.freeze(guide, *args, **kwargs)


def test_an_autoguide_never_run_names_the_fix(unchanged):
    """An AutoGuide that was never run calls its model without arguments: a TypeError naming
    that and the call to make, not the model's own "missing 1 required positional argument"."""
    guide = AutoNormal(model)
    with (
        unchanged(),
        pytest.raises(TypeError, match=r"has not been run.*pu.freeze\(guide, \*args\)"),
    ):
        pu.freeze(guide)
    y = torch.randn(4)
    assert len(pu.freeze(guide, y).sites) == 1  # given the model's arguments: frozen
