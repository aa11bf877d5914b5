"""erased_log_likelihood_fn: the recorded log p(D_e|θ) equals Pyro's traced one (values and
gradients) on four models, and falls back or refuses where a recording cannot be trusted."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.experiments.datasets import moons
from pyro_unlearn.experiments.moons import SparseGPClassifier
from pyro_unlearn.infer import erased_log_likelihood_fn

S = 64


def linear(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_zeros(()), 10.0))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal((x * w).sum(-1) + b, 0.5), obs=y)


def logistic(x, y=None):
    w = pyro.sample("w", dist.Normal(x.new_zeros(2), 3.0).to_event(1))
    with pyro.plate("data", len(x)):
        logits = (x * w).sum(-1)
        return pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def hierarchical(group, y=None):
    """y_gi ~ N(μ_g, σ²), μ_g ~ N(m, 1), m ~ N(0, 5), σ ~ LogNormal: a plate of groups."""
    m = pyro.sample("m", dist.Normal(y.new_zeros(()), 5.0))
    sigma = pyro.sample("sigma", dist.LogNormal(y.new_zeros(()), 1.0))
    with pyro.plate("groups", 3):
        mu = pyro.sample("mu", dist.Normal(m, 1.0))
    with pyro.plate("data", len(y)):
        return pyro.sample("y", dist.Normal(mu[..., group], sigma), obs=y)


def case(name):
    """(model, guide class, args, erased, plate) of a test model."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    if name == "linear":
        y = x @ torch.tensor([1.0, -2.0]) + 0.5 + 0.5 * torch.randn(40, generator=g)
        return linear, AutoMultivariateNormal, (x, y), [0, 3, 7], "data"
    if name == "logistic":
        y = (x[:, 0] - x[:, 1] > 0).float()
        return logistic, AutoNormal, (x[:10], y[:10]), None, None  # D_e passed alone
    if name == "hierarchical":
        group = torch.arange(30) % 3
        y = group.float() + torch.randn(30, generator=g)
        return hierarchical, AutoDiagonalNormal, (group, y), [1, 2, 10, 20], "data"
    data = moons()
    model = SparseGPClassifier(data.inducing)
    return model, AutoMultivariateNormal, (data.x, data.y), data.erased, "data"


def draws(posterior, fn, args, num):
    """{site: (num, *shape)} from the posterior, in the model's constrained values."""
    with pyro.plate("_draws", num, dim=-fn.nesting - 1):
        trace = pyro.poutine.trace(posterior).get_trace(*args)
    return {
        name: trace.nodes[name]["value"].reshape(num, *shape) for name, shape in fn.shapes.items()
    }


@pytest.mark.parametrize("name", ["linear", "logistic", "hierarchical", "moons"])
def test_fused_equals_the_traced_path(name):
    model, guide_class, args, erased, plate = case(name)
    guide = guide_class(model)
    guide(*args)
    posterior = pu.freeze(guide, *args)
    fn = erased_log_likelihood_fn(model, posterior, *args, erased=erased, plate=plate)
    for _ in range(2):  # the second batch replays the recording made on the first
        values = draws(posterior, fn, args, S)
        fused, traced = fn(values), fn.traced(values)
        assert fn.fused and fn.reason is None
        assert fused.shape == (S,) and torch.allclose(fused, traced, rtol=1e-5, atol=1e-5)
        assert fused.std() > 0  # it depends on θ
    # gradients with respect to θ agree too (the recording is differentiable)
    leaves = {k: v.detach().requires_grad_() for k, v in draws(posterior, fn, args, S).items()}

    def grad(f):
        return torch.autograd.grad(f(leaves).sum(), list(leaves.values()), allow_unused=True)

    for a, b in zip(grad(fn), grad(fn.traced), strict=True):  # None: a site D_e ignores (m)
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_first_particle_is_the_closed_form():
    x, y = torch.zeros(4, 2), torch.tensor([0.0, 1.0, 2.0, 3.0])
    guide = AutoNormal(linear)
    guide(x, y)
    fn = erased_log_likelihood_fn(linear, pu.freeze(guide), x, y, erased=[1, 3], plate="data")
    ll = fn({"w": torch.zeros(2, 2), "b": torch.tensor([0.0, 2.0])})
    expected = dist.Normal(torch.tensor([[0.0], [2.0]]), 0.5).log_prob(torch.tensor([1.0, 3.0]))
    assert torch.allclose(ll, expected.sum(-1), atol=1e-5) and fn.fused


def test_a_python_branch_on_theta_falls_back_to_the_traced_path():
    def branchy(x, y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 0.1))
        scale = sigma * 2.0 if bool((sigma > 1e3).any()) else sigma  # frozen by a recording
        with pyro.plate("data", len(x)):
            return pyro.sample("y", dist.Normal(x[:, 0], scale), obs=y)

    x, y = torch.randn(6, 2), torch.randn(6)
    guide = AutoNormal(branchy)
    guide(x, y)
    posterior = pu.freeze(guide, x, y)
    fn = erased_log_likelihood_fn(branchy, posterior, x, y, erased=[0], plate="data")
    fn({"sigma": torch.tensor([0.5, 0.6])})  # a recording here would freeze the short branch
    values = {"sigma": torch.tensor([0.5, 2e3])}  # the long one (for all particles: any())
    ll = fn(values)
    assert not fn.fused and "reads a tensor into Python" in fn.reason and "test_fused" in fn.reason
    assert torch.allclose(ll, fn.traced(values))
    expected = dist.Normal(x[0, 0], torch.tensor([1.0, 4e3])).log_prob(y[0])
    assert torch.allclose(ll, expected, rtol=1e-5)


def test_jit_false_takes_the_traced_path():
    model, guide_class, args, erased, plate = case("linear")
    guide = guide_class(model)
    guide(*args)
    fn = erased_log_likelihood_fn(
        model, pu.freeze(guide, *args), *args, erased=erased, plate=plate, jit=False
    )
    fn({"w": torch.zeros(3, 2), "b": torch.zeros(3)})
    assert not fn.fused and fn.reason == "jit=False"


def test_bad_input_is_refused():
    model, guide_class, args, erased, plate = case("linear")
    guide = guide_class(model)
    guide(*args)
    posterior = pu.freeze(guide, *args)
    with pytest.raises(TypeError, match="FrozenPosterior"):
        erased_log_likelihood_fn(model, guide, *args, erased=erased, plate=plate)
    fn = erased_log_likelihood_fn(model, posterior, *args, erased=erased, plate=plate)
    with pytest.raises(ValueError, match="exactly the model's latent sites"):
        fn({"w": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"values\['w'\] must have shape"):
        fn({"w": torch.zeros(3, 3), "b": torch.zeros(3)})

    def mixing(x, y=None):  # every particle reads the first one's w: no batch of θ works
        w = pyro.sample("w", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(x)):
            return pyro.sample("y", dist.Normal(x @ w.reshape(-1)[:2], 1.0), obs=y)

    pyro.clear_param_store()
    guide = AutoNormal(mixing)
    guide(*args)
    with pytest.raises(ValueError, match="cannot evaluate a batch of θ"):
        erased_log_likelihood_fn(mixing, pu.freeze(guide, *args), *args, erased=[0], plate="data")


def test_gaussian_reverse_kl_uses_the_recording_and_lands_where_the_traced_path_does():
    from pyro_unlearn.exact import gaussian_linear_posterior
    from pyro_unlearn.guides import read_gaussian, write_gaussian
    from pyro_unlearn.infer import gaussian_reverse_kl

    model, guide_class, args, erased, plate = case("linear")
    guide = guide_class(model)
    guide(*args)
    features = torch.cat([args[0], torch.ones(len(args[0]), 1)], -1)  # q(θ|D) = p(θ|D)
    loc, precision = gaussian_linear_posterior(
        torch.zeros(3), torch.eye(3) / 100.0, features, args[1], 0.5
    )
    write_gaussian(guide, loc, torch.linalg.inv(precision))
    posterior = pu.freeze(guide, *args)
    options = dict(erased=erased, plate=plate, posterior=posterior, num_steps=30, window=10)
    options |= dict(num_samples=500, progress=False, diagnose=False)
    results = {}
    for jit in (True, False):
        pyro.set_rng_seed(1)
        results[jit] = gaussian_reverse_kl(model, guide, *args, jit=jit, **options)
    assert results[True].likelihood == "fused"
    assert results[False].likelihood == "traced: jit=False"
    fused, traced = (read_gaussian(results[j].posterior) for j in (True, False))
    assert torch.allclose(fused[0], traced[0], atol=1e-4)  # same draws, same numbers
    assert not torch.allclose(fused[0], read_gaussian(posterior)[0], atol=1e-2)  # it moved
