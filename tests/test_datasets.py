import pytest
import torch

from pyro_unlearn.datasets import linear_regression


def test_linear_regression_is_reproducible_and_split():
    a, b = linear_regression(seed=3), linear_regression(seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(a.remaining) + len(a.erased) == 100
    assert not set(a.remaining.tolist()) & set(a.erased.tolist())
    assert a.x[a.erased].mean() > a.x[a.remaining].mean() + 0.3  # the erased cluster is shifted


def test_linear_regression_rejects_bad_split():
    with pytest.raises(ValueError, match="num_erased"):
        linear_regression(num_data=10, num_erased=10)
