"""The zuko-flow autoguide (pyro_unlearn/guides/flows.py), Pyro's own flows with both losses,
and the numeric log q* of a flow posterior."""

from functools import partial

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
import zuko
from pyro.distributions.transforms import affine_autoregressive, block_autoregressive, iterated
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormalizingFlow

import pyro_unlearn as pu
from pyro_unlearn.guides import FLOW_PRESETS, AutoZukoFlow

PRESETS = sorted(FLOW_PRESETS)
LOSSES = [pu.Trace_EUBO, pu.ReverseKL]


def gaussian_model(loc, scale):
    def model():
        pyro.sample("theta", dist.Normal(loc, scale).to_event(1))

    return model


def make_affine(guide, loc, log_scale):
    """Zero every MADE's output layer and set the Gaussian part: the flow is then exactly
    N(loc, diag(exp(log_scale))²)."""
    guide()
    with torch.no_grad():
        for m in guide.flow.modules():
            if isinstance(m, zuko.nn.MaskedMLP):
                m[-1].weight.zero_()
                m[-1].bias.zero_()
        affine = guide.flow.transform.transforms[0]
        affine.loc.copy_(loc)
        affine.unconstrained_scale_tril.copy_(torch.diag(log_scale))  # diag: exp(log_scale)
    return guide


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_samples_constrained_sites_and_scores_like_its_gaussian(preset, device):
    def model():
        pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("s", dist.Gamma(2.0, 1.0))

    guide = AutoZukoFlow(model, preset, hidden_features=(8, 8))
    draw = guide()
    assert draw["a"].shape == (2,) and draw["a"].device == device
    assert float(draw["s"].detach()) > 0  # constrained back through Pyro's packing
    loc, log_scale = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, -1.0, 0.5])
    make_affine(guide, loc, log_scale)
    x = torch.randn(7, 3)
    expected = dist.Normal(loc, log_scale.exp()).to_event(1).log_prob(x)
    assert torch.allclose(guide.get_posterior().log_prob(x), expected, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_set_gaussian_makes_a_fresh_preset_that_gaussian(preset):
    guide = AutoZukoFlow(gaussian_model(torch.zeros(3), 1.0), preset, hidden_features=(8, 8))
    loc = torch.tensor([1.0, -2.0, 0.5])
    scale_tril = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.3, 0.0], [-1.0, 0.2, 2.0]])
    with pytest.raises(RuntimeError, match="call the guide once"):
        guide.set_gaussian(loc, scale_tril)
    guide()
    with pytest.raises(ValueError, match="expected loc of shape"):
        guide.set_gaussian(loc[:2], scale_tril)
    guide.set_gaussian(loc, scale_tril)
    draws = guide.get_posterior().sample(torch.Size([20000]))  # torch's sample works too
    assert draws.shape == (20000, 3) and not draws.requires_grad
    assert torch.allclose(draws.mean(0), loc, atol=0.1)
    assert torch.allclose(draws.T.cov(), scale_tril @ scale_tril.T, atol=0.2)
    assert guide.get_posterior().rsample(torch.Size([2])).requires_grad
    x = torch.randn(7, 3)
    expected = dist.MultivariateNormal(loc, scale_tril=scale_tril).log_prob(x)
    assert torch.allclose(guide.get_posterior().log_prob(x), expected, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_numeric_log_q_max_of_a_flow_with_known_mode(preset):
    loc, log_scale = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, -1.0, 0.5])
    guide = make_affine(
        AutoZukoFlow(gaussian_model(torch.zeros(3), 1.0), preset, hidden_features=(8, 8)),
        loc,
        log_scale,
    )
    posterior = pu.freeze(guide)
    exact = dist.Normal(loc, log_scale.exp()).to_event(1).log_prob(loc)
    assert posterior.mode_info["method"] == "numeric"
    assert {"value", "samples", "starts", "steps"} <= set(posterior.mode_info)
    assert float(posterior.log_q_max) == pytest.approx(float(exact), abs=1e-3)
    assert torch.allclose(posterior.mode["_AutoZukoFlow_latent"], loc, atol=1e-2)


def test_log_q_max_of_a_flow_trained_on_a_gaussian():
    loc, scale = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0])
    model = gaussian_model(loc, scale)  # no data: the ELBO optimum is the prior itself
    guide = AutoZukoFlow(model, hidden_features=(16, 16))
    svi = SVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.02}),
        Trace_ELBO(num_particles=32, vectorize_particles=True),
    )
    for _ in range(400):
        svi.step()
    posterior = pu.freeze(guide)
    exact = dist.Normal(loc, scale).to_event(1).log_prob(loc)
    assert float(posterior.log_q_max) == pytest.approx(float(exact), abs=0.15)
    error = (posterior.mode["_AutoZukoFlow_latent"] - loc) / scale
    assert float(error.abs().max()) < 0.25  # within a quarter of a standard deviation
    # a maximum: no fresh draw scores above it
    _, log_q = draws(posterior, 5000)
    assert log_q.shape == (5000,)
    assert float(log_q.max()) <= float(posterior.log_q_max) + 1e-4


def test_frozen_flow_is_independent_and_restores(linreg, model):
    guide = AutoZukoFlow(model, "maf", hidden_features=(8, 8))
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    trace = posterior.sample()
    before = posterior.log_prob(trace).clone()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step(linreg.x, linreg.y)
    assert torch.equal(posterior.log_prob(trace), before)
    live_lp = guide.get_posterior().log_prob(trace.nodes["_AutoZukoFlow_latent"]["value"])
    assert not torch.allclose(live_lp, before)
    posterior.restore(guide)
    live_lp = guide.get_posterior().log_prob(trace.nodes["_AutoZukoFlow_latent"]["value"])
    assert torch.allclose(live_lp, before, atol=1e-5)


def test_any_zuko_flow_and_bad_arguments():
    model = gaussian_model(torch.zeros(3), 1.0)
    guide = AutoZukoFlow(model, lambda d: zuko.flows.NSF(d, transforms=1, hidden_features=(8,)))
    assert guide()["theta"].shape == (3,)
    with pytest.raises(ValueError, match="unknown flow 'made'"):
        AutoZukoFlow(model, "made")
    with pytest.raises(TypeError, match="preset name or a callable"):
        AutoZukoFlow(model, 3)
    with pytest.raises(ValueError, match="init_scale"):
        AutoZukoFlow(model, init_scale=0.0)
    with pytest.raises(ValueError, match="event shape"):
        AutoZukoFlow(model, lambda d: zuko.flows.MAF(d + 1))()
    with pytest.raises(TypeError, match="zuko.flows.Flow"):
        AutoZukoFlow(model, lambda d: torch.nn.Linear(d, d))()
    with pytest.raises(NotImplementedError, match="numeric"):
        AutoZukoFlow(model).median()


def test_block_neural_autoregressive_flow_is_refused():
    model = gaussian_model(torch.zeros(3), 1.0)
    guide = AutoNormalizingFlow(model, partial(iterated, 2, block_autoregressive))
    guide()
    with pytest.raises(TypeError, match="cannot score points it did not sample.*AutoZukoFlow"):
        pu.freeze(guide)


# -- unlearning with flow guides on the conjugate linear regression --------------------------


def draws(posterior, num_samples, *args):
    """θ_s ~ q and log q(θ_s) of a frozen AutoContinuous posterior, batched over samples."""
    batched = pyro.plate("draws", num_samples, dim=-1)(posterior)
    site = poutine.trace(batched).get_trace(*args).nodes[posterior.sites[0]]
    return site["value"], site["fn"].log_prob(site["value"])


def kl_to(posterior, target, num_samples=4000):
    """Monte-Carlo KL(q ‖ target) over the packed latent (w, b): the AutoContinuous order."""
    theta, log_q = draws(posterior, num_samples)
    return float((log_q - target.log_prob(theta)).mean())


def fit(guide, model, linreg, steps):
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / steps)})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(steps):
        svi.step(linreg.x, linreg.y)
    return guide


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_coupling_flow_unlearns_to_the_closed_form(loss_cls, linreg, model, exact_posterior):
    # q(θ|D) is a coupling flow that equals the exact p(θ|D) (its Gaussian part set to it, its
    # transforms at the identity), so q(θ|D)/p(D_e|θ) is exactly p(θ|D_r); the flow family
    # contains it, and both losses must find it from q(θ|D), moving every flow parameter.
    guide = AutoZukoFlow(model, "coupling", hidden_features=(16, 16))
    guide(linreg.x, linreg.y)
    full = exact_posterior(torch.arange(len(linreg.y)))
    with torch.no_grad():
        affine = guide.flow.transform.transforms[0]
        affine.loc.copy_(full.loc)
        affine.unconstrained_scale_tril.copy_(
            torch.distributions.transform_to(torch.distributions.constraints.lower_cholesky).inv(
                full.scale_tril
            )
        )
    posterior = pu.freeze(guide)
    target = exact_posterior(linreg.remaining)
    assert kl_to(posterior, full) < 1e-3
    before = kl_to(posterior, target)
    particles = 4096 if loss_cls is pu.ReverseKL else 256
    loss = loss_cls(posterior, 0.0, num_particles=particles, vectorize_particles=True)
    optim = pyro.optim.ClippedAdam({"lr": 0.005, "lrd": 0.1 ** (1 / 600)})
    svi = SVI(pu.unlearn(model), guide, optim, loss)
    erased = linreg.x[linreg.erased], linreg.y[linreg.erased]
    for _ in range(600):
        svi.step(*erased)
    after = kl_to(pu.freeze(guide), target)
    assert before > 0.5  # forgetting the cluster matters
    assert after < 0.05, (before, after)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize(
    "make_guide",
    [
        lambda m: AutoIAFNormal(m, hidden_dim=[8]),
        lambda m: AutoNormalizingFlow(
            m, partial(iterated, 2, affine_autoregressive, hidden_dims=[8])
        ),
    ],
    ids=["AutoIAFNormal", "AutoNormalizingFlow-affine"],
)
def test_pyro_flows_work_with_both_losses(loss_cls, make_guide, linreg, model, exact_posterior):
    guide = fit(make_guide(model), model, linreg, 1000)
    posterior = pu.freeze(guide)
    target = exact_posterior(linreg.remaining)
    before = kl_to(posterior, target)
    loss = loss_cls(posterior, 0.0, num_particles=512, vectorize_particles=True)
    optim = pyro.optim.ClippedAdam({"lr": 0.002, "lrd": 0.1 ** (1 / 300)})
    svi = SVI(pu.unlearn(model), guide, optim, loss)
    for _ in range(300):
        svi.step(linreg.x[linreg.erased], linreg.y[linreg.erased])
    assert kl_to(pu.freeze(guide), target) < 0.5 * before


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_lambda_zero_never_searches_for_the_mode(loss_cls, linreg, model):
    guide = AutoZukoFlow(model, "iaf", hidden_features=(8, 8))
    guide(linreg.x, linreg.y)
    posterior = pu.freeze(guide)
    loss = loss_cls(posterior, 0.0, num_particles=8, vectorize_particles=True)
    loss.loss(pu.unlearn(model), guide, linreg.x[:3], linreg.y[:3])
    assert posterior._log_q_max is None  # λ = 0: no threshold, no numeric search
    loss = loss_cls(posterior, 1e-3, num_particles=8, vectorize_particles=True)
    loss.loss(pu.unlearn(model), guide, linreg.x[:3], linreg.y[:3])
    assert posterior.mode_info["method"] == "numeric"
