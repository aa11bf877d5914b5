import pytest
import torch

from pyro_unlearn.experiments.datasets import linear_regression


def test_linear_regression_is_reproducible_and_split():
    a, b = linear_regression(seed=3), linear_regression(seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(a.remaining) + len(a.erased) == 100
    assert not set(a.remaining.tolist()) & set(a.erased.tolist())
    assert a.x[a.erased].mean() > a.x[a.remaining].mean() + 0.3  # the erased cluster is shifted


def test_linear_regression_rejects_bad_split():
    with pytest.raises(ValueError, match="num_erased"):
        linear_regression(num_data=10, num_erased=10)


def test_banknote_is_the_shipped_uci_file_with_the_papers_split():
    import hashlib
    from importlib import resources

    import numpy as np

    from pyro_unlearn.experiments.datasets import banknote

    raw = (
        resources.files("pyro_unlearn.experiments") / "data" / "data_banknote_authentication.txt"
    ).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == (
        "d0539aaed2139ba7a587b3e34fb345ce503ff7d5d33dbf9912d8e195ce425cb9"
    )
    data = banknote(dtype=torch.float64)
    idx = np.arange(1372)
    np.random.seed(0)  # noqa: NPY002 (the paper's recipe, verbatim)
    np.random.shuffle(idx)  # noqa: NPY002
    assert data.erased.tolist() == sorted(idx[960:].tolist())
    assert data.remaining.tolist() == sorted(idx[:960].tolist())
    assert int((data.y == 0).sum()) == 762 and int((data.y == 1).sum()) == 610
    assert data.x.dtype == torch.float64 and data.x.shape == (1372, 4)


def test_flights_has_the_complete_rows_standardised_with_carrier_and_month():
    from pyro_unlearn.experiments.datasets import FLIGHTS_FEATURES, flights

    data = flights()
    assert data.num_train + len(data.y_test) == 273_853
    assert len(data.y_test) == round(0.1 * 273_853)
    assert data.x_train.shape == (data.num_train, 8) and data.feature_names == FLIGHTS_FEATURES
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert torch.isfinite(t).all() and t.dtype == torch.float32
    assert data.x_train.mean(0).abs().max() < 1e-3
    assert (data.x_train.std(0) - 1).abs().max() < 1e-3
    assert abs(data.y_mean - 7.0) < 0.2 and abs(data.y_std - 44.9) < 0.5  # minutes (DATA.md)
    assert set(data.month.unique().tolist()) == set(range(1, 13))
    assert len(data.carriers) == 16 and len(data.carrier) == data.num_train
    assert "stand-in" in data.source


def test_flights_subset_is_seeded():
    from pyro_unlearn.experiments.datasets import flights

    a, b, c = flights(subset=1000, seed=1), flights(subset=1000, seed=1), flights(subset=1000)
    assert torch.equal(a.x_train, b.x_train) and a.x_train.shape == (900, 8)
    assert not torch.equal(a.y_train, c.y_train)
    with pytest.raises(ValueError, match="subset"):
        flights(subset=10**7)


def test_moons_is_sklearns_sorted_with_the_papers_sorted_split():
    from sklearn.datasets import make_moons

    from pyro_unlearn.experiments.datasets import moons

    data = moons()
    x, y = make_moons(100, noise=0.2, random_state=0)
    order = x[:, 0].argsort()
    assert torch.equal(data.x, torch.as_tensor(x[order])) and data.x.dtype == torch.float64
    assert torch.equal(data.y, torch.as_tensor(y[order], dtype=torch.float64))
    inducing = make_moons(20, shuffle=True, noise=0.2, random_state=0)[0]
    assert torch.equal(data.inducing, torch.as_tensor(inducing))
    # D_e: the 20 points with the largest first input, 19 of them of class 1
    assert data.erased.tolist() == list(range(80, 100))
    assert int(data.y[data.erased].sum()) == 19
    assert data.x[data.erased, 0].min() > data.x[data.remaining, 0].max()
    assert data.mask.sum() == 20 and data.mask[data.erased].all()
    assert sorted(data.remaining.tolist() + data.erased.tolist()) == list(range(100))


@pytest.mark.parametrize("scenario, size", [("partial", 30), ("large", 40), ("full", 50)])
def test_moons_class_one_scenarios_erase_the_rightmost_of_class_one(scenario, size):
    from pyro_unlearn.experiments.datasets import moons

    data = moons(scenario, dtype=torch.float32)
    assert data.scenario == scenario and data.x.dtype == torch.float32
    assert len(data.erased) == size and (data.y[data.erased] == 1).all()
    kept_ones = data.remaining[data.y[data.remaining] == 1]
    if scenario == "full":
        assert len(kept_ones) == 0  # every point of class 1 is erased
    else:
        assert data.x[data.erased, 0].min() > data.x[kept_ones, 0].max()


def test_moons_random_scenario_is_seeded():
    from pyro_unlearn.experiments.datasets import moons

    a, b, c = moons("random"), moons("random"), moons("random", seed=1)
    assert len(a.erased) == 20 and torch.equal(a.erased, b.erased)
    assert not torch.equal(a.erased, c.erased)
    assert 5 < int(a.y[a.erased].sum()) < 15  # both classes, unlike the sorted erasure
    with pytest.raises(ValueError, match="scenario"):
        moons("sideways")
