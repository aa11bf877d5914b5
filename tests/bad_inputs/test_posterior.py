"""Bad inputs of FrozenPosterior.load_state_dict and restore: all checked before anything is
replaced, and the posterior, the live guide and the param store stay bit-identical."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.params import ParamSnapshot


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((x * w.unsqueeze(-2)).sum(-1), 1.0), obs=y)


def wider(x, y=None):
    return regression(torch.cat([x, x[:, :1]], -1), y)


@pytest.fixture
def setup():
    x, y = torch.randn(8, 2), torch.randn(8)
    guide = AutoNormal(regression)
    guide(x, y)
    posterior = pu.freeze(guide)
    state = posterior.state_dict()  # a saved q(θ|D)
    with torch.no_grad():
        pyro.param("AutoNormal.locs.w").add_(1.0)  # the live guide moved on
    target = pu.freeze(guide)  # another posterior, which a bad state must leave as it is
    return guide, target, state, x, y


LOC, SCALE = "AutoNormal.locs.w", "AutoNormal.scales.w"


def _edit(state, case):
    params = dict(state["params"])
    if case.startswith("missing-"):
        del state[case[len("missing-") :]]
    elif case == "param-missing":
        del params[SCALE]
    elif case == "param-extra":
        params["AutoNormal.locs.b"] = torch.zeros(1)
    elif case == "param-shape":
        params[LOC] = torch.zeros(3)
    elif case == "param-dtype":
        params[LOC] = params[LOC].double()
    elif case == "param-nan":
        params[LOC] = torch.tensor([0.0, math.nan])
    elif case == "param-not-tensor":
        params[LOC] = [0.0, 0.0]
    elif case == "sites-renamed":
        state["sites"] = ["v_unconstrained"]
    elif case == "mode-missing-site":
        state["mode"] = {}
    elif case == "mode-shape":
        state["mode"] = {"w_unconstrained": torch.zeros(3)}
    elif case == "mode-inf":
        state["mode"] = {"w_unconstrained": torch.tensor([math.inf, 0.0])}
    elif case == "log_q_max-nan":
        state["log_q_max"] = torch.tensor(math.nan)
    elif case == "log_q_max-shape":
        state["log_q_max"] = torch.zeros(2)
    elif case == "mode_info-not-dict":
        state["mode_info"] = "exact"
    if case.startswith("param-"):
        state["params"] = params
    return state


CASES = {
    "missing-params": (ValueError, r"lacks the key\(s\) \['params'\]"),
    "missing-log_q_max": (ValueError, r"\['log_q_max'\]"),
    "missing-mode": (ValueError, r"\['mode'\]"),
    "missing-mode_info": (ValueError, r"\['mode_info'\]"),
    "missing-sites": (ValueError, r"\['sites'\]"),
    "param-missing": (ValueError, "do not match"),
    "param-extra": (ValueError, "do not match"),
    "param-shape": (ValueError, r"'AutoNormal.locs.w' has shape \(3,\)"),
    "param-dtype": (ValueError, "torch.float64"),
    "param-nan": (ValueError, r"'AutoNormal.locs.w' has a non-finite value \(nan\) at row 1"),
    "param-not-tensor": (ValueError, "must be a tensor"),
    "sites-renamed": (ValueError, "saved sites"),
    "mode-missing-site": (ValueError, "mode must give a value for every site"),
    "mode-shape": (ValueError, r"mode of site 'w_unconstrained' has shape \(3,\)"),
    "mode-inf": (ValueError, r"mode of site 'w_unconstrained' has a non-finite value \(inf\)"),
    "log_q_max-nan": (ValueError, "log_q_max is not finite"),
    "log_q_max-shape": (ValueError, "one-element tensor"),
    "mode_info-not-dict": (ValueError, "mode_info must be a dict"),
}


@pytest.mark.parametrize("case, error, match", [(k, *v) for k, v in CASES.items()], ids=CASES)
def test_bad_saved_state(setup, unchanged, case, error, match):
    guide, target, state, _, _ = setup
    log_q_max, mode = target.log_q_max.clone(), dict(target.mode)
    with unchanged(guide, target), pytest.raises(error, match=match):
        target.load_state_dict(_edit(state, case))
    assert torch.equal(target.log_q_max, log_q_max) and target.mode.keys() == mode.keys()
    assert all(torch.equal(target.mode[k], v) for k, v in mode.items())


def test_not_a_state(setup, unchanged):
    guide, target, _, _, _ = setup
    with unchanged(guide, target), pytest.raises(TypeError, match="state must be a dict"):
        target.load_state_dict([1, 2])


def _function_guide(x, y=None):
    loc = pyro.param("other_loc", torch.zeros(2))
    pyro.sample("w", dist.Normal(loc, 1.0).to_event(1))


@pytest.mark.parametrize(
    "other, match",
    [
        ("wider", r"'AutoNormal.locs.w' has shape \(3,\) in the guide, \(2,\) frozen"),
        ("multivariate", "names differ"),
        ("function", "names differ"),
        ("not-callable", "expected a guide"),
    ],
    ids=["site-of-another-shape", "another-guide-class", "guide-function", "not-callable"],
)
def test_restore_into_a_guide_of_another_structure(setup, unchanged, other, match):
    """restore(guide) writes into its argument only if it has the posterior's structure (names
    and shapes); a guide of another structure is refused and nothing is written."""
    guide, target, _, x, y = setup
    if other == "wider":
        with ParamSnapshot().active():
            wrong = AutoNormal(wider)
            wrong(x, y)
    elif other == "multivariate":
        wrong = AutoMultivariateNormal(regression)
    elif other == "function":
        wrong = _function_guide
    else:
        wrong = 3
    posterior = pu.freeze(guide, x, y)
    with unchanged(guide, target, posterior), pytest.raises(ValueError, match=match):
        posterior.restore(wrong)
