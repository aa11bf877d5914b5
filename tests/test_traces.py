import torch

from pyro_unlearn.traces import particle_dim_of, sum_per_particle


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
