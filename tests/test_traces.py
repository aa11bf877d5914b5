import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_unlearn.traces import particle_dim_of, sum_per_particle, vectorization_problem


def test_sum_per_particle_keeps_only_the_particle_dim():
    lp = torch.arange(24.0).reshape(2, 3, 4)  # (enum, particles, data)
    assert torch.equal(sum_per_particle(lp, -2, 3), lp.sum((0, 2)))
    assert torch.equal(sum_per_particle(torch.ones(3, 1), -2, 3), torch.ones(3))
    assert torch.equal(sum_per_particle(torch.ones(5), -2, 3), torch.full((3,), 5.0))
    assert torch.equal(sum_per_particle(lp, None, 1), lp.sum().reshape(1))


def test_particle_dim():
    assert particle_dim_of(1, True, 3) is None
    assert particle_dim_of(8, False, 3) is None
    assert particle_dim_of(8, True, 3) == -3


def test_a_subsampled_model_with_erased_rows_takes_the_particle_plate():
    """Mini-batch SVI as Pyro's tutorials write it: under ``unlearn`` the erased rows replace the
    subsample (each counted once); replaying that subsample without the particle plate rescales
    the plate, which is not a mixing of particles (it sent forget to vmap, undiagnosed)."""
    import pyro_unlearn as pu

    def model(x, y):
        a = pyro.sample("a", dist.Normal(0.0, 10.0))
        b = pyro.sample("b", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x), subsample_size=100) as idx:
            pyro.sample("obs", dist.Normal(a + b * x[idx], 0.5), obs=y[idx])

    x = torch.linspace(-1, 1, 1000)
    y = 1 + 2 * x
    guide = AutoNormal(model)
    guide(x, y)
    wrapped = pu.unlearn(model, erased=torch.arange(50), plate="data")
    assert vectorization_problem(wrapped, guide, (x, y), {}, 4) is None

    def mixing(x, y):  # still caught: every particle reads the first one's a
        a = pyro.sample("a", dist.Normal(0.0, 10.0))
        b = pyro.sample("b", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x), subsample_size=100) as idx:
            pyro.sample("obs", dist.Normal(a.reshape(-1)[:1] + b * x[idx], 0.5), obs=y[idx])

    wrapped = pu.unlearn(mixing, erased=torch.arange(50), plate="data")
    assert "particle" in vectorization_problem(wrapped, guide, (x, y), {}, 4)
