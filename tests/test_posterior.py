import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

import pyro_unlearn as pu
from pyro_unlearn.guides import read_gaussian


def plain_guide(x, y=None):
    loc = pyro.param("w_loc", torch.zeros(2))
    scale = pyro.param("w_scale", torch.ones(2), constraint=dist.constraints.positive)
    pyro.sample("w", dist.Normal(loc, scale).to_event(1))
    b_loc = pyro.param("b_loc", torch.tensor(0.0))
    pyro.sample("b", dist.Normal(b_loc, 1.0))


GUIDES = [
    AutoNormal,
    AutoDiagonalNormal,
    AutoMultivariateNormal,
    AutoLowRankMultivariateNormal,
    None,
]


@pytest.mark.parametrize("guide_cls", GUIDES, ids=lambda c: getattr(c, "__name__", "function"))
def test_frozen_posterior_does_not_move_while_the_guide_trains(guide_cls, linreg, model):
    guide = plain_guide if guide_cls is None else guide_cls(model)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide, linreg.x, linreg.y)
    trace = posterior.sample(linreg.x, linreg.y)
    before = posterior.log_prob(trace, linreg.x, linreg.y)
    log_q_max = posterior.log_q_max.clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(30):
        svi.step(linreg.x, linreg.y)
    assert torch.equal(posterior.log_prob(trace, linreg.x, linreg.y), before)
    assert torch.equal(posterior.log_q_max, log_q_max)
    live = pu.freeze(guide, linreg.x, linreg.y)  # the live guide did move
    assert not torch.equal(live.log_prob(trace, linreg.x, linreg.y), before)


def test_exact_log_q_max_full_covariance(linreg, model):
    guide = AutoMultivariateNormal(model, init_scale=0.3)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    L = guide.get_posterior().scale_tril.detach()
    expected = -1.5 * math.log(2 * math.pi) - L.diagonal().log().sum()
    assert posterior.mode_info["method"] == "exact"
    assert float(posterior.log_q_max) == pytest.approx(float(expected), rel=1e-6)
    assert torch.allclose(posterior.mode[posterior.sites[0]], guide.loc.detach())


def test_exact_log_q_max_mean_field(linreg, model):
    guide = AutoNormal(model, init_scale=0.2)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    assert sorted(posterior.sites) == ["b_unconstrained", "w_unconstrained"]
    expected = 3 * (-0.5 * math.log(2 * math.pi) - math.log(0.2))
    assert float(posterior.log_q_max) == pytest.approx(expected, rel=1e-5)


def test_numeric_log_q_max_for_a_non_gaussian_guide():
    def guide():
        a = pyro.param("a", torch.tensor(3.0), constraint=dist.constraints.positive)
        b = pyro.param("b", torch.tensor(2.0), constraint=dist.constraints.positive)
        pyro.sample("s", dist.Gamma(a, b))

    posterior = pu.freeze(guide)
    exact = dist.Gamma(3.0, 2.0).log_prob(torch.tensor(1.0))  # mode (a − 1)/b = 1
    assert posterior.mode_info["method"] == "numeric"
    assert float(posterior.log_q_max) == pytest.approx(float(exact), abs=1e-3)
    assert float(posterior.mode["s"]) == pytest.approx(1.0, abs=1e-2)


def test_constrained_log_prob_carries_the_jacobian():
    def model():
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    guide = AutoNormal(model)
    guide()
    posterior = pu.freeze(guide)
    trace = posterior.sample()
    s = trace.nodes["s"]["value"]
    unconstrained = posterior.log_prob(trace)
    constrained = posterior.log_prob(trace, constrained=True)
    assert torch.allclose(constrained, unconstrained - s.log())  # log q(s) = log q(z) − log|ds/dz|


def test_save_and_load(tmp_path, linreg, model, trained):
    guide = trained(AutoMultivariateNormal)
    posterior = pu.freeze(guide)
    torch.save(posterior.state_dict(), tmp_path / "q.pt")
    pyro.clear_param_store()
    fresh = AutoMultivariateNormal(model)
    loaded = pu.freeze(fresh, linreg.x, linreg.y)
    trace = posterior.sample()
    assert not torch.allclose(loaded.log_prob(trace), posterior.log_prob(trace))
    loaded.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert torch.equal(loaded.log_prob(trace), posterior.log_prob(trace))
    assert torch.equal(loaded.log_q_max, posterior.log_q_max)
    other = pu.freeze(AutoNormal(model), linreg.x, linreg.y)
    with pytest.raises(ValueError, match="do not match"):
        other.load_state_dict(posterior.state_dict())


def test_restore_writes_q_back_into_the_live_guide(linreg, model):
    guide = AutoMultivariateNormal(model)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    loc = guide.loc.detach().clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(linreg.x, linreg.y)
    assert not torch.equal(guide.loc.detach(), loc)
    posterior.restore(guide)
    assert torch.equal(guide.loc.detach(), loc)


class _HookedGuide(AutoNormal):
    """An AutoNormal whose frozen copy takes over restore for strings (the hook a frozen guide
    may define for targets that are not Pyro guides, as a GPyTorch q(u|D) does for a GP)."""

    def restore_into(self, posterior, target):
        if not isinstance(target, str):
            return False
        self.restored = (posterior, target)
        return True


def test_restore_hands_other_targets_to_the_frozen_guides_hook(linreg, model):
    guide = _HookedGuide(model)
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    assert posterior.guide is not guide
    posterior.restore("elsewhere")  # taken by the hook: no structure check, nothing run
    assert posterior.guide.restored == (posterior, "elsewhere")
    loc = guide.locs.w.detach().clone()
    guide.locs.w.data.add_(1.0)
    posterior.restore(guide)  # declined by the hook: the generic path writes q(θ|D)
    assert torch.equal(guide.locs.w.detach(), loc)
    with pytest.raises(ValueError, match="structure|could not run"):
        posterior.restore(AutoNormal(lambda: pyro.sample("v", dist.Normal(0.0, 1.0))))


def test_usable_as_a_guide_in_predictive(linreg, model, trained):
    posterior = pu.freeze(trained(AutoMultivariateNormal))
    samples = Predictive(model, guide=posterior, num_samples=200)(linreg.x)
    assert samples["w"].shape == (200, 1, 2) or samples["w"].shape == (200, 2)
    assert torch.allclose(samples["w"].reshape(200, 2).mean(0), torch.tensor([1.0, -2.0]), atol=0.3)


def test_follows_dtype(linreg, model):
    x, y = linreg.x.double(), linreg.y.double()
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    posterior = pu.freeze(guide)
    assert posterior.log_q_max.dtype == torch.float64
    assert posterior.log_q_max.device == x.device


def test_bad_guides():
    with pytest.raises(TypeError, match="callable"):
        pu.freeze(42)

    net = torch.nn.Linear(1, 1)

    def module_guide():
        pyro.module("net", net)
        pyro.sample("z", dist.Normal(net.bias[0], 1.0))

    with pytest.raises(TypeError, match="PyroModule"):
        pu.freeze(module_guide)


def test_params_are_a_copy_and_freezing_registers_nothing():
    def guide():
        loc = pyro.param("loc", torch.tensor(0.5))
        pyro.sample("s", dist.Normal(loc, 1.0))

    posterior = pu.freeze(guide)  # never run: frozen at its initial values
    assert "loc" not in pyro.get_param_store()
    params = posterior.params
    assert list(params) == ["loc"] and float(params["loc"]) == 0.5
    params["loc"].add_(1.0)  # the copy changes, q(θ|D) does not
    assert float(posterior.params["loc"]) == 0.5
    trace = posterior.sample()
    trace.nodes["s"]["value"] = torch.tensor(0.5)
    assert float(posterior.log_prob(trace)) == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_restore_refuses_a_guide_the_param_store_no_longer_holds():
    """After pyro.clear_param_store() another guide registers the same names: restoring into
    the old guide would write into the new one's tensors. It is refused, both left as they were."""

    def model():
        pyro.sample("a", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    old = AutoMultivariateNormal(model)
    old()
    posterior = pu.freeze(old)
    pyro.clear_param_store()
    new = AutoMultivariateNormal(model)
    new()
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with pytest.raises(ValueError, match="not the param store's tensors"):
        posterior.restore(old)
    after = dict(pyro.get_param_store().items())
    assert all(torch.equal(before[k], after[k]) for k in before)
    posterior.restore(new)  # the guide that owns the store's parameters takes it
    assert torch.equal(read_gaussian(new)[0], read_gaussian(posterior)[0])
