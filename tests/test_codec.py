"""CODEC, L-CODEC and FOCI (pyro_unlearn/codec.py).

Tolerances come from the estimator's spread measured over 10 seeds at n = 2000 (float64):
Y = X + Z gives T_n = 0.967–0.971 (the nearest-neighbour bias at this n, not noise: sd 0.001);
under Y ⊥ Z | X the conditional T_n has sd 0.037 and the unconditional one sd 0.016, so the
bounds below sit 4–5 sd from 0.
"""

import math

import pytest
import torch

from pyro_unlearn.codec import codec, foci, lcodec, nearest_neighbors

N = 2000


def _gen(seed, device):
    return torch.Generator(device=device).manual_seed(seed)


def _uniform(g, *shape):
    return torch.rand(*shape, generator=g, device=g.device, dtype=torch.float64)


@pytest.mark.parametrize("statistic", [codec, lcodec])
def test_near_one_when_y_is_a_function_of_x_and_z(statistic, device):
    g = _gen(0, device)
    x, z = _uniform(g, N), _uniform(g, N)
    t = float(statistic(x + z, z, x, generator=g))
    assert 0.94 < t <= 1.0
    # unconditional: Y a function of Z alone
    assert float(statistic(z**2 - z, z, generator=g)) > 0.99


@pytest.mark.parametrize("statistic", [codec, lcodec])
def test_near_zero_under_conditional_independence(statistic, device):
    g = _gen(1, device)
    x, z = _uniform(g, N), _uniform(g, N)
    y = x + 0.2 * torch.randn(N, generator=g, device=device, dtype=torch.float64)
    assert abs(float(statistic(y, z, x, generator=g))) < 0.15
    assert abs(float(statistic(y, z, generator=g))) < 0.08  # Y ⊥ Z
    # but Z is far from independent of Y when it carries half of it
    assert float(statistic(y + z, z, x, generator=g)) > 0.3


def test_exactly_one_on_tied_data(device):
    g = _gen(2, device)
    x = torch.randint(0, 3, (N,), generator=g, device=device).double()
    z = torch.randint(0, 3, (N,), generator=g, device=device).double()
    # every point has exact duplicates in (X, Z) with the same Y: T_n = 1 exactly
    assert float(codec(x + 3 * z, z, x, generator=g)) == 1.0
    assert float(lcodec(x + 3 * z, z, x, generator=g)) == 1.0


def test_lcodec_agrees_with_codec_on_continuous_data(device):
    for seed in range(3):
        g = _gen(seed, device)
        x, z = _uniform(g, 500, 2), _uniform(g, 500)
        y = torch.sin(3 * x[:, 0]) + z * x[:, 1] + 0.1 * _uniform(g, 500)
        exact = float(codec(y, z, x, generator=g))
        jittered = float(lcodec(y, z, x, generator=g))
        assert abs(exact - jittered) < 1e-3, (seed, exact, jittered)


def test_lcodec_and_codec_agree_on_average_on_tied_data(device):
    # With ties, CODEC breaks them at random and L-CODEC by jitter: the same estimand.
    exact, jittered = [], []
    for seed in range(6):
        g = _gen(seed, device)
        x = torch.randint(0, 4, (1000,), generator=g, device=device).double()
        z = torch.randint(0, 4, (1000,), generator=g, device=device).double()
        y = x + z + torch.randn(1000, generator=g, device=device, dtype=torch.float64)
        exact.append(float(codec(y, z, x, generator=g)))
        jittered.append(float(lcodec(y, z, x, generator=g)))
    mean_e, mean_j = sum(exact) / 6, sum(jittered) / 6
    assert 0.1 < mean_e < 0.6  # Z explains part of Y given X
    assert abs(mean_e - mean_j) < 0.05, (exact, jittered)


def test_random_tie_breaking_is_uniform(device):
    # 1-D points 0, 1, 1, 1, 5: point 0's nearest neighbour is one of the three tied at 1.
    points = torch.tensor([[0.0], [1.0], [1.0], [1.0], [5.0]], device=device)
    g = _gen(3, device)
    picks = torch.stack([nearest_neighbors(points, generator=g, chunk_size=2) for _ in range(600)])
    counts = torch.bincount(picks[:, 0], minlength=5).tolist()
    assert counts[0] == counts[4] == 0
    assert all(150 < c < 250 for c in counts[1:4]), counts  # 200 ± 4.2 sd
    # and a duplicate's neighbour is another duplicate (distance 0), never itself
    assert set(picks[:, 1].tolist()) == {2, 3}
    # without random tie-breaking: the first index
    assert nearest_neighbors(points, random_ties=False, generator=g, chunk_size=2)[0] == 1


def test_chunking_does_not_change_the_result(device):
    g = _uniform(_gen(4, device), 300, 3)
    y, z, x = g[:, 0] + g[:, 1], g[:, 1], g[:, 2]
    assert float(codec(y, z, x, chunk_size=7)) == float(codec(y, z, x))


def test_nan_when_nothing_is_left_to_explain(device):
    z = torch.linspace(0, 1, 50, device=device)
    assert math.isnan(float(codec(torch.ones(50, device=device), z)))  # Y constant
    # every X_i has a duplicate (its nearest neighbour) with the same Y: Y is a function of X
    x = torch.arange(25.0, device=device).repeat(2)
    assert math.isnan(float(codec(x**2, z, x)))


def test_foci_selects_the_relevant_features(device):
    g = _gen(5, device)
    features = torch.randn(1000, 10, generator=g, device=device, dtype=torch.float64)
    y = 2 * features[:, 7] + torch.sin(3 * features[:, 2])
    for method in ("lcodec", "codec"):
        out = foci(y, features, method=method, generator=g)
        assert out.selected == [7, 2], out
        assert out.stopped == "no_gain"
        assert out.coefficients[0] > 0.5 and out.coefficients[1] > 0.5
    # the steps are the CODEC values of the selected features given the earlier ones
    out = foci(y, features, method="codec", generator=g)
    assert out.coefficients[0] == pytest.approx(float(codec(y, features[:, 7])), abs=1e-12)
    assert out.coefficients[1] == pytest.approx(
        float(codec(y, features[:, 2], features[:, 7])), abs=1e-12
    )
    # with noise in Y the relevant features still come first
    noisy = y + 0.3 * torch.randn(1000, generator=g, device=device, dtype=torch.float64)
    assert foci(noisy, features, generator=g).selected[:2] == [7, 2]


def test_foci_limits(device):
    g = _gen(6, device)
    features = torch.randn(400, 5, generator=g, device=device, dtype=torch.float64)
    y = features.sum(1)
    assert len(foci(y, features, max_features=2, generator=g).selected) == 2
    # independent noise: nothing is selected unless a minimum is asked for
    noise = torch.randn(400, generator=g, device=device, dtype=torch.float64)
    assert foci(noise, features[:, :2], generator=g).selected in ([], [0], [1])
    forced = foci(noise, features[:, :2], min_features=2, generator=g)
    assert sorted(forced.selected) == [0, 1]


def test_bad_input(device):
    y = torch.randn(10, device=device)
    with pytest.raises(ValueError, match="z has 9 rows, y has 10"):
        codec(y, torch.randn(9, device=device))
    with pytest.raises(ValueError, match=r"y must be \(n,\)"):
        codec(torch.randn(10, 2, device=device), y)
    with pytest.raises(ValueError, match="at least 2 observations"):
        codec(y[:1], y[:1])
    with pytest.raises(ValueError, match=r"z has a non-finite value \(nan\) at row"):
        codec(y, torch.full((10,), math.nan, device=device))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        codec(y, [1.0] * 10)
    with pytest.raises(ValueError, match="jitter must be positive"):
        lcodec(y, y, jitter=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        foci(y, y[:, None], method="knn")
    with pytest.raises(ValueError, match="min_features ≤ max_features ≤ 1"):
        foci(y, y[:, None], max_features=3)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        codec(y, y, chunk_size=0)
