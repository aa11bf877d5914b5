import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_unlearn as pu
from pyro_unlearn.handlers import ERASED, erased_log_likelihood


def model(y, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    pyro.factor("penalty", -(mu**2))
    with pyro.plate("data", len(y), subsample_size=subsample_size) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def traced(fn, *args, mu=0.3, **kwargs):
    tr = poutine.trace(poutine.condition(fn, data={"mu": torch.tensor(mu)})).get_trace(
        *args, **kwargs
    )
    tr.compute_log_prob()
    return tr


Y = torch.arange(10.0) / 3


def exact(rows, mu=0.3):
    return dist.Normal(mu, 1.0).log_prob(Y[rows]).sum()


def test_whole_call_is_erased_but_not_priors_or_factors():
    tr = traced(pu.unlearn(model), Y)
    assert tr.nodes["y"]["infer"][ERASED] is True
    assert ERASED not in tr.nodes["mu"]["infer"]
    assert ERASED not in tr.nodes["penalty"]["infer"]
    assert torch.allclose(erased_log_likelihood(tr), exact(slice(None)).reshape(1))


@pytest.mark.parametrize("rows", [[1, 4, 7], torch.tensor([7, 1, 4]), (torch.arange(10) % 3 == 1)])
def test_indices_and_mask_equal_erased_data_alone(rows):
    full = erased_log_likelihood(traced(pu.unlearn(model, erased=rows, plate="data"), Y))
    idx = torch.tensor([1, 4, 7])
    alone = erased_log_likelihood(traced(pu.unlearn(model), Y[idx]))
    assert torch.allclose(full, alone)
    assert torch.allclose(full, exact(idx).reshape(1))


def test_subsampling_maps_batch_positions_to_data_indices():
    rows = torch.tensor([0, 2, 5, 9])
    handler = pu.unlearn(model, erased=rows, plate="data")
    pyro.set_rng_seed(0)
    estimates = []
    for _ in range(2000):
        tr = traced(handler, Y, subsample_size=4)
        idx = tr.nodes["data"]["value"]
        mask = tr.nodes["y"]["infer"][ERASED]
        assert torch.equal(mask, torch.isin(idx, rows))  # each batch row flagged by its index
        estimates.append(erased_log_likelihood(tr))
    estimates = torch.cat(estimates)
    # scaled by N/B: an unbiased estimate of log p(D_e|θ)
    assert abs(estimates.mean() - exact(rows)) < 4 * estimates.std() / 2000**0.5


def test_context_manager_and_dict_form():
    def two_sites(y, z):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("a", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        with pyro.plate("b", len(z)):
            pyro.sample("z", dist.Normal(mu, 2.0), obs=z)

    z = torch.ones(4)
    with pu.unlearn(erased={"y": [0, 1], "z": None}, plate={"y": "a"}):
        tr = traced(two_sites, Y, z)
    assert tr.nodes["y"]["infer"][ERASED].tolist() == [True, True] + [False] * 8
    assert tr.nodes["z"]["infer"][ERASED] is True
    expected = exact(slice(0, 2)) + dist.Normal(0.3, 2.0).log_prob(z).sum()
    assert torch.allclose(erased_log_likelihood(tr), expected.reshape(1))


def test_sizeless_plate_takes_rows_positionally():
    def gp_like(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", dim=-1):
            pyro.sample("y", dist.Normal(mu, 1.0).expand([len(y)]), obs=y)

    tr = traced(pu.unlearn(gp_like, erased=[2, 3], plate="data"), Y)
    assert torch.allclose(erased_log_likelihood(tr), exact([2, 3]).reshape(1))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(erased=[1, 2], plate="nope"), ValueError, "never appeared"),
        (dict(erased=[1, 10], plate="data"), IndexError, "out of range"),
        (dict(erased=[1, 1], plate="data"), ValueError, "duplicate"),
        (dict(erased=[], plate="data"), ValueError, "empty"),
        (dict(erased=torch.zeros(10, dtype=torch.bool), plate="data"), ValueError, "empty"),
        (dict(erased=torch.ones(9, dtype=torch.bool), plate="data"), ValueError, "length 9"),
        (dict(erased=[-1], plate="data"), ValueError, "negative"),
        (dict(erased=[0.5], plate="data"), TypeError, "integer"),
        (dict(erased=[[0, 1]], plate="data"), ValueError, "1-D"),
        (dict(erased=[1, 2]), ValueError, "plate"),
        (dict(plate="data"), ValueError, "without erased"),
        (dict(erased={"w": None}), ValueError, "never ran"),
        (dict(erased={}), ValueError, "empty dict"),
        (dict(erased="abc", plate="data"), TypeError, "indices or a boolean mask"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        traced(pu.unlearn(model, **kwargs), Y)


def test_no_flagged_site():
    with pytest.raises(ValueError, match="no erased observations"):
        erased_log_likelihood(traced(model, Y))
