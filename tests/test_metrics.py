import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyro_unlearn.metrics import gaussian_kl, guide_moments


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


def test_guide_moments(linreg, model):
    normal = AutoNormal(model, init_scale=0.3)
    normal(linreg.x, linreg.y)
    loc, cov = guide_moments(normal)
    assert loc.shape == (3,) and torch.allclose(cov, 0.09 * torch.eye(3))
    mvn = AutoMultivariateNormal(model, init_scale=0.2)
    mvn(linreg.x, linreg.y)
    loc, cov = guide_moments(mvn)
    assert torch.allclose(loc, mvn.loc.detach()) and torch.allclose(cov, 0.04 * torch.eye(3))
    with pytest.raises(TypeError, match="Gaussian AutoGuide"):
        guide_moments(lambda: None)
