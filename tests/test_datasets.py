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


def test_banknote_is_the_shipped_uci_file_with_the_papers_split():
    import hashlib
    from importlib import resources

    import numpy as np

    from pyro_unlearn.datasets import banknote

    raw = (
        resources.files("pyro_unlearn") / "data" / "data_banknote_authentication.txt"
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
