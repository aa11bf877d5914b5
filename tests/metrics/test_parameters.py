import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)

from pyro_unlearn import freeze
from pyro_unlearn.guides import read_gaussian
from pyro_unlearn.metrics import gaussian_kl, param_kl

from .models import frozen_gaussian, regression


def test_gaussian_kl_closed_form_1d():
    # KL(N(0, 1) ‖ N(1, 4)) = log 2 + (1 + 1)/8 − 1/2
    kl = gaussian_kl(torch.zeros(1), torch.eye(1), torch.ones(1), 4 * torch.eye(1))
    assert float(kl) == pytest.approx(torch.tensor(2.0).log().item() + 0.25 - 0.5, rel=1e-6)


def test_gaussian_kl_monte_carlo():
    torch.manual_seed(0)
    A = torch.randn(3, 3)
    cov_p, cov_q = A @ A.T + torch.eye(3), torch.eye(3) * 2
    p = torch.distributions.MultivariateNormal(torch.ones(3), cov_p)
    q = torch.distributions.MultivariateNormal(torch.zeros(3), cov_q)
    x = p.sample((200000,))
    mc = (p.log_prob(x) - q.log_prob(x)).mean()
    assert float(gaussian_kl(torch.ones(3), cov_p, torch.zeros(3), cov_q)) == pytest.approx(
        float(mc), rel=0.02
    )


def test_read_gaussian(linreg, model):
    normal = AutoNormal(model, init_scale=0.3)
    normal(linreg.x, linreg.y)
    loc, cov = read_gaussian(normal)
    assert loc.shape == (3,) and torch.allclose(cov, 0.09 * torch.eye(3))
    mvn = AutoMultivariateNormal(model, init_scale=0.2)
    mvn(linreg.x, linreg.y)
    loc, cov = read_gaussian(mvn)
    assert torch.allclose(loc, mvn.loc.detach()) and torch.allclose(cov, 0.04 * torch.eye(3))
    with pytest.raises(TypeError, match="Gaussian AutoGuide"):
        read_gaussian(lambda: None)


# -- read_gaussian of frozen posteriors: the moments param_kl compares ------------------------
@pytest.mark.parametrize("cls", [AutoNormal, AutoMultivariateNormal])
def test_read_gaussian_frozen(cls, reg_data):
    x, y = reg_data
    guide = cls(regression, init_loc_fn=init_to_value(values={"s": torch.tensor(2.0)}))
    guide(x, y)
    before = [t.clone() for t in read_gaussian(guide)]
    frozen = freeze(guide, x, y)
    optim = pyro.optim.Adam({"lr": 0.1})
    svi = pyro.infer.SVI(regression, guide, optim, pyro.infer.Trace_ELBO())
    for _ in range(3):
        svi.step(x, y)
    loc, cov = read_gaussian(frozen)
    assert torch.equal(loc, before[0]) and torch.equal(cov, before[1])
    assert not torch.equal(read_gaussian(guide)[0], before[0])  # the live guide moved
    assert loc[-1] == pytest.approx(math.log(2.0))  # the unconstrained space holds log s
    loc.add_(1.0)  # clones: the frozen posterior is untouched
    assert torch.equal(read_gaussian(frozen)[0], before[0])


def test_read_gaussian_rejects_flows(reg_data):
    x, y = reg_data
    flow = AutoIAFNormal(regression)
    flow(x, y)
    for guide in (flow, freeze(flow, x, y)):
        with pytest.raises(TypeError, match="Gaussian AutoGuide .*AutoNormal.*got AutoIAFNormal"):
            read_gaussian(guide)


# -- param_kl -------------------------------------------------------------------------------------
def isotropic_kl(loc_p, s_p, loc_q, s_q):
    """KL(N(μ_p, s_p² I) ‖ N(μ_q, s_q² I)) by hand."""
    d = len(loc_p)
    sq = float(((loc_q - loc_p) ** 2).sum())
    return 0.5 * (d * s_p**2 / s_q**2 + sq / s_q**2 - d + 2 * d * math.log(s_q / s_p))


def mc_standard_error(loc_p, cov_p, loc_q, cov_q, n, draws=200_000):
    """Standard error of the S = n Monte-Carlo KL estimate, from the moments."""
    p = torch.distributions.MultivariateNormal(loc_p.double(), cov_p.double())
    q = torch.distributions.MultivariateNormal(loc_q.double(), cov_q.double())
    theta = p.sample((draws,))
    return float((p.log_prob(theta) - q.log_prob(theta)).std()) / math.sqrt(n)


@pytest.mark.parametrize(
    "cls",
    [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal],
)
def test_param_kl_gaussian_closed_form_and_monte_carlo(cls, reg_data):
    x, y = reg_data
    p = frozen_gaussian(cls, [1.0, -1.0], 2.0, 0.3, x, y)
    q = frozen_gaussian(cls, [0.5, -0.8], 1.0, 0.5, x, y)
    closed = param_kl(p, q, x, y)
    assert float(closed) == pytest.approx(float(param_kl(p, q, x, y, method="closed_form")))
    moments_p, moments_q = read_gaussian(p), read_gaussian(q)
    assert float(closed) == pytest.approx(float(gaussian_kl(*moments_p, *moments_q)), rel=1e-6)
    if cls is not AutoLowRankMultivariateNormal:  # known moments: N(μ, s² I), μ = (w, log s)
        loc_p, loc_q = torch.tensor([1.0, -1.0, math.log(2.0)]), torch.tensor([0.5, -0.8, 0.0])
        assert float(closed) == pytest.approx(isotropic_kl(loc_p, 0.3, loc_q, 0.5), rel=1e-5)
    n = 4000
    pyro.set_rng_seed(1)
    mc = param_kl(p, q, x, y, num_samples=n, method="monte_carlo")
    se = mc_standard_error(*moments_p, *moments_q, n)
    assert abs(float(mc) - float(closed)) < 4 * se


def test_param_kl_live_against_frozen(reg_data):
    x, y = reg_data
    p = frozen_gaussian(AutoNormal, [1.0, -1.0], 2.0, 0.3, x, y)
    init = init_to_value(values={"w": torch.tensor([0.5, -0.8]), "s": torch.tensor(1.0)})
    live = AutoNormal(regression, init_loc_fn=init, init_scale=0.5)
    live(x, y)
    loc_p, loc_q = torch.tensor([1.0, -1.0, math.log(2.0)]), torch.tensor([0.5, -0.8, 0.0])
    assert float(param_kl(p, live, x, y)) == pytest.approx(
        isotropic_kl(loc_p, 0.3, loc_q, 0.5), rel=1e-5
    )
    assert float(param_kl(live, p, x, y)) == pytest.approx(
        isotropic_kl(loc_q, 0.5, loc_p, 0.3), rel=1e-5
    )
    pyro.set_rng_seed(2)
    n = 4000
    mc = param_kl(live, p, x, y, num_samples=n, method="monte_carlo")
    cov_p, cov_q = 0.09 * torch.eye(3), 0.25 * torch.eye(3)
    se = mc_standard_error(loc_q, cov_q, loc_p, cov_p, n)
    assert abs(float(mc) - isotropic_kl(loc_q, 0.5, loc_p, 0.3)) < 4 * se
    # nothing was registered beyond the live guide's own parameters
    assert all(name.startswith("AutoNormal.") for name in pyro.get_param_store().keys())


def normal_guide(loc_w, scale_w, loc_s, scale_s):
    """A plain guide function: w ~ N(loc_w, scale_w²) (vector), s ~ LogNormal(loc_s, scale_s)."""

    def guide(x, y=None):
        pyro.sample("w", dist.Normal(x.new_tensor(loc_w), scale_w).to_event(1))
        pyro.sample("s", dist.LogNormal(x.new_tensor(loc_s), scale_s))

    return guide


def test_param_kl_plain_guides_monte_carlo(reg_data):
    x, y = reg_data
    p, q = normal_guide([0.0, 1.0], 0.5, 0.2, 0.3), normal_guide([0.3, 1.2], 0.7, 0.0, 0.4)
    # no auxiliary sites: scored on the latent sites themselves (here w and s; the KL between
    # two LogNormals with the same transform equals that of the underlying Normals)
    kl = lambda m1, s1, m2, s2: math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5  # noqa: E731
    exact = kl(0.0, 0.5, 0.3, 0.7) + kl(1.0, 0.5, 1.2, 0.7) + kl(0.2, 0.3, 0.0, 0.4)
    n = 4000
    pyro.set_rng_seed(3)
    mc = param_kl(p, q, x, y, num_samples=n)  # "auto": not Gaussian AutoGuides → Monte Carlo
    loc_p, loc_q = torch.tensor([0.0, 1.0, 0.2]), torch.tensor([0.3, 1.2, 0.0])
    cov_p, cov_q = (
        torch.diag(torch.tensor([0.25, 0.25, 0.09])),
        torch.diag(torch.tensor([0.49, 0.49, 0.16])),
    )
    se = mc_standard_error(loc_p, cov_p, loc_q, cov_q, n)
    assert abs(float(mc) - exact) < 4 * se
    with pytest.raises(TypeError, match="closed form needs two Gaussian AutoGuides"):
        param_kl(p, q, x, y, method="closed_form")


def test_param_kl_errors(reg_data):
    x, y = reg_data
    normal = frozen_gaussian(AutoNormal, [1.0, -1.0], 2.0, 0.3, x, y)
    mvn = frozen_gaussian(AutoMultivariateNormal, [1.0, -1.0], 2.0, 0.3, x, y)
    with pytest.raises(ValueError, match="different auxiliary sites"):
        param_kl(normal, mvn, x, y)
    with pytest.raises(ValueError, match="different auxiliary sites"):
        param_kl(normal, mvn, x, y, method="monte_carlo")

    def other(x, y=None):
        pyro.sample("v", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("s", dist.LogNormal(x.new_zeros(()), 1.0))

    with pytest.raises(ValueError, match=r"different auxiliary sites.*'v'"):
        param_kl(normal_guide([0.0, 0.0], 1.0, 0.0, 1.0), other, x, y)
    wide = normal_guide([0.0, 0.0, 0.0], 1.0, 0.0, 1.0)  # w ∈ R³: same names, other shapes
    with pytest.raises(ValueError, match=r"different auxiliary sites.*\(3,\)"):
        param_kl(normal_guide([0.0, 0.0], 1.0, 0.0, 1.0), wide, x, y)
    with pytest.raises(ValueError, match="method must be"):
        param_kl(normal, normal, x, y, method="exact")
