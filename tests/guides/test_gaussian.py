import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from pyro_unlearn import freeze
from pyro_unlearn.guides import (
    GAUSSIAN_GUIDES,
    is_gaussian,
    latent_layout,
    read_gaussian,
    write_gaussian,
)

F64 = torch.float64


def model():
    """Two sites, one constrained: θ = (log s, w₁, w₂, w₃)."""
    pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=F64), 1.0))
    pyro.sample("w", dist.Normal(torch.zeros(3, dtype=F64), 1.0).to_event(1))


def target(diagonal):
    loc = torch.tensor([0.3, -1.0, 0.5, 2.0], dtype=F64)
    A = torch.tensor(
        [[1.0, 0, 0, 0], [0.4, 2.0, 0, 0], [-0.3, 0.2, 0.5, 0], [0.1, 0.0, 0.7, 1.5]], dtype=F64
    )
    cov = torch.diag(A.diagonal() ** 2) if diagonal else A @ A.T
    return loc, cov


@pytest.mark.parametrize("cls", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
@pytest.mark.parametrize("buffers", [False, True])
def test_write_then_read_round_trips(cls, buffers):
    guide = cls(model)
    if buffers:
        guide._setup_prototype()  # set up, parameters never read
    else:
        guide()
    loc, cov = target(diagonal=cls is not AutoMultivariateNormal)
    assert write_gaussian(guide, loc, cov, buffers=buffers) is guide
    read_loc, read_cov = read_gaussian(guide)
    torch.testing.assert_close(read_loc, loc)
    torch.testing.assert_close(read_cov, cov)
    torch.testing.assert_close(read_gaussian(guide, diagonal=True)[1], cov.diagonal().sqrt())
    assert (len(pyro.get_param_store()) == 0) == buffers  # buffers never touch the store
    # and the guide samples from what it holds: the site "s" is exp of θ's first entry
    with torch.no_grad(), pyro.plate("draws", 20000, dim=-1):
        draws = pyro.poutine.trace(guide).get_trace().nodes["s"]["value"].log()
    assert float(draws.mean()) == pytest.approx(0.3, abs=0.05)


def test_read_write_read_keeps_the_moments_of_a_trained_guide():
    guide = AutoMultivariateNormal(model, init_scale=0.3)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    for _ in range(5):
        svi.step()
    loc, cov = (t.clone() for t in read_gaussian(guide))
    assert not torch.allclose(cov, 0.09 * torch.eye(4, dtype=F64))  # training moved it
    write_gaussian(guide, torch.zeros(4, dtype=F64), torch.eye(4, dtype=F64))
    assert torch.equal(read_gaussian(guide)[0], torch.zeros(4, dtype=F64))
    write_gaussian(guide, loc, cov)
    torch.testing.assert_close(read_gaussian(guide)[1], cov)
    svi.step()  # the optimiser still holds the guide's parameters: it moves what was written
    assert not torch.equal(read_gaussian(guide)[0], loc)


def test_multivariate_covariance_is_scale_tril_times_its_transpose():
    guide = AutoMultivariateNormal(model)
    guide()
    scale_tril = torch.tensor(
        [[1.0, 0, 0, 0], [0.5, 1.0, 0, 0], [0.2, -0.4, 1.0, 0], [0.0, 0.3, 0.1, 1.0]], dtype=F64
    )
    guide.scale = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=F64)
    guide.scale_tril = scale_tril
    L = guide.get_posterior().scale_tril
    torch.testing.assert_close(L, guide.scale[:, None] * scale_tril)
    torch.testing.assert_close(read_gaussian(guide)[1], L @ L.T)


def test_low_rank_is_read_but_not_written():
    guide = AutoLowRankMultivariateNormal(model, rank=2, init_scale=0.5)
    guide()
    W, d = guide.cov_factor.detach(), guide.scale.detach()
    loc, cov = read_gaussian(guide)
    S = torch.diag(d)  # Pyro's parametrisation: Σ = S (W Wᵀ + I) S
    torch.testing.assert_close(cov, S @ (W @ W.T + torch.eye(4, dtype=F64)) @ S)
    with pytest.raises(TypeError, match="AutoLowRankMultivariateNormal"):
        write_gaussian(guide, loc, cov)


def test_frozen_posterior_is_read_from_its_own_parameters():
    guide = AutoDiagonalNormal(model, init_scale=0.2)
    guide()
    frozen = freeze(guide)
    write_gaussian(guide, torch.ones(4, dtype=F64), scale=torch.ones(4, dtype=F64))
    loc, scale = read_gaussian(frozen, diagonal=True)
    torch.testing.assert_close(scale, torch.full((4,), 0.2, dtype=F64))
    assert not torch.equal(loc, torch.ones(4, dtype=F64))
    assert is_gaussian(frozen) and latent_layout(frozen).size == 4
    with pytest.raises(TypeError, match="FrozenPosterior"):
        write_gaussian(frozen, loc, scale=scale)


def test_layout_maps_theta_through_the_bijections():
    guide = AutoNormal(model)
    guide()
    layout = latent_layout(guide)
    assert [(s.name, s.start, s.stop) for s in layout.sites] == [("s", 0, 1), ("w", 1, 4)]
    values = layout.values(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64))
    assert float(values["s"]) == 1.0 and values["w"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("cls", [AutoDelta, AutoLaplaceApproximation])
def test_non_gaussian_guides_raise_naming_the_supported_ones(cls):
    guide = cls(model)
    guide()
    assert not is_gaussian(guide)
    names = "|".join(c.__name__ for c in GAUSSIAN_GUIDES)
    for function in (read_gaussian, lambda g: write_gaussian(g, torch.zeros(4), torch.eye(4))):
        with pytest.raises(TypeError, match=f"{cls.__name__}") as info:
            function(guide)
        assert all(c.__name__ in str(info.value) for c in GAUSSIAN_GUIDES), names
    with pytest.raises(TypeError, match="Gaussian AutoGuide"):
        read_gaussian(lambda: None)


def test_bad_writes_raise():
    guide = AutoNormal(model)
    with pytest.raises(ValueError, match="never been run"):
        read_gaussian(guide)
    guide()
    with pytest.raises(ValueError, match="exactly one"):
        write_gaussian(guide, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        write_gaussian(guide, torch.zeros(3, dtype=F64), scale=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="off-diagonal"):
        write_gaussian(guide, *target(diagonal=False))
