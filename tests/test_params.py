"""ParamSnapshot: take, restore bit for bit, run code against a private param store."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyro_unlearn.params import ParamSnapshot, guide_tensors, trainable


def live():
    return dict(pyro.get_param_store().named_parameters())


def live_state():
    store = pyro.get_param_store()
    return {n: (v, v.detach().clone()) for n, v in store.named_parameters()}


def assert_store_is(state):
    """The store holds the same tensor objects as ``state``, with bit-identical values."""
    store = dict(pyro.get_param_store().named_parameters())
    assert sorted(store) == sorted(state)
    for name, (tensor, value) in state.items():
        assert store[name] is tensor, name
        assert torch.equal(store[name].detach(), value), name


@pytest.mark.parametrize("kind", [AutoNormal, AutoMultivariateNormal])
def test_restore_after_a_failed_step_is_bit_identical(kind, linreg, model):
    guide = kind(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(linreg.x, linreg.y)
    before = live_state()
    snapshot = ParamSnapshot.take(guide, linreg.x, linreg.y)
    assert sorted(snapshot) == sorted(before)
    # a step that fails: an infinite observation turns the gradients, then the parameters, NaN
    y_bad = linreg.y.clone()
    y_bad[0] = float("inf")
    with pyro.validation_enabled(False):
        svi.step(linreg.x, y_bad)
    assert any(not torch.isfinite(v).all() for v, _ in before.values())
    snapshot.restore()
    assert_store_is(before)
    # the guide is still bound to the live tensors: training goes on from the restored values
    loss = svi.step(linreg.x, linreg.y)
    assert torch.isfinite(torch.tensor(loss))
    assert any(not torch.equal(v.detach(), old) for v, old in before.values())


def test_snapshot_is_independent_of_later_changes(linreg, model):
    guide = AutoNormal(model)
    guide(linreg.x, linreg.y)
    snapshot = ParamSnapshot.take(guide, linreg.x, linreg.y)
    copies = {n: v.clone() for n, v in snapshot.items()}
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(linreg.x, linreg.y)
    pyro.get_param_store()["AutoNormal.locs.b"] = torch.tensor(7.0)  # replaced, not updated
    for name, value in snapshot.items():
        assert torch.equal(value, copies[name]), name
        assert not value.requires_grad
    assert not torch.equal(pyro.param("AutoNormal.locs.b").detach(), copies["AutoNormal.locs.b"])
    snapshot.restore()  # an entry replaced by a new tensor is overwritten in place
    assert torch.equal(pyro.param("AutoNormal.locs.b").detach(), copies["AutoNormal.locs.b"])


def test_take_registers_nothing_and_keeps_constraints():
    def guide():
        pyro.param("scale", torch.tensor(2.0), constraint=dist.constraints.positive)
        pyro.param("loc", torch.tensor(0.5))

    snapshot = ParamSnapshot.take(guide)  # never run: its initial values, the store untouched
    assert list(snapshot) == ["scale", "loc"]
    assert len(pyro.get_param_store()) == 0
    assert snapshot.constraint("scale") is dist.constraints.positive
    assert torch.allclose(snapshot["scale"], torch.tensor(2.0).log())  # unconstrained
    snapshot.restore()  # missing entries are added, with their constraints
    assert pyro.param("scale").item() == pytest.approx(2.0)
    assert live()["scale"].requires_grad


def test_active_runs_against_a_private_store():
    pyro.param("shared", torch.tensor(1.0))
    private = ParamSnapshot()
    with private.active():
        assert "shared" not in pyro.get_param_store()
        pyro.param("inside", torch.tensor(3.0))
    assert list(private) == ["inside"] and "inside" not in pyro.get_param_store()
    overlay = ParamSnapshot.of_store(clone=False)  # the live tensors, a private dict
    with overlay.active():
        assert pyro.param("shared") is live()["shared"]
        pyro.param("extra", torch.tensor(0.0))
    assert overlay["shared"] is live()["shared"]
    assert "extra" in overlay and "extra" not in pyro.get_param_store()
    with pytest.raises(RuntimeError, match="boom"), private.active():
        raise RuntimeError("boom")
    assert sorted(pyro.get_param_store().keys()) == ["shared"]  # back after an error


def test_copy_shares_tensors_clone_does_not():
    snapshot = ParamSnapshot({"a": torch.zeros(2)})
    assert snapshot.copy()["a"] is snapshot["a"]
    cloned = snapshot.clone(requires_grad=True)
    assert cloned["a"] is not snapshot["a"] and cloned["a"].requires_grad
    with snapshot.copy().active():
        pyro.param("b", torch.ones(1))
    assert list(snapshot) == ["a"]


def test_restore_refuses_a_shape_mismatch():
    pyro.param("w", torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        ParamSnapshot({"w": torch.zeros(2)}).restore()
    assert torch.equal(pyro.param("w").detach(), torch.zeros(3))


def test_trainable_switches_exactly_the_guides_tensors_on_and_back():
    def guide():
        pyro.param("loc", torch.tensor(0.0))
        pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)

    guide()
    other = pyro.param("other", torch.tensor(2.0))  # not the guide's
    store = pyro.get_param_store()
    store._params["loc"].requires_grad_(False)
    tensors = guide_tensors(guide)
    assert tensors == [store._params["loc"], store._params["scale"]]
    with pytest.raises(RuntimeError, match="inside"), trainable(guide):
        assert store._params["loc"].requires_grad and store._params["scale"].requires_grad
        other.requires_grad_(False)
        raise RuntimeError("inside")  # the flags come back on failure too
    assert not store._params["loc"].requires_grad and store._params["scale"].requires_grad
    assert not other.requires_grad  # untouched by trainable
    assert set(store.keys()) == {"loc", "scale", "other"}


def test_trainable_covers_a_modules_plain_children_that_pyro_module_skips():
    class Guide(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(1, 1)  # a plain nn.Module: pyro.module registers it

        def forward(self):
            pyro.sample("z", dist.Normal(self.net.bias.squeeze(), 1.0))

    g = Guide()
    g()
    g.requires_grad_(False)
    with trainable(g) as tensors:
        assert {id(p) for p in g.parameters()} <= {id(t) for t in tensors}
        assert all(p.requires_grad for p in g.parameters())
    assert not any(p.requires_grad for p in g.parameters())
