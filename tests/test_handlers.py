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
    handler = pu.unlearn(model, erased=rows, plate="data", subsample="batch")
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


@pytest.mark.parametrize("batch", [4, 7])
def test_subsampling_plate_draws_the_erased_rows(batch):
    """By default the plate's batch is D_e (padded with unflagged rows up to B): every step is
    the exact log p(D_e|θ), each erased row counted once."""
    rows = torch.tensor([9, 0, 5, 2])
    handler = pu.unlearn(model, erased=rows, plate="data")
    for _ in range(3):
        tr = traced(handler, Y, subsample_size=batch)
        idx = tr.nodes["data"]["value"]
        assert len(idx) == batch and set(idx[:4].tolist()) == {0, 2, 5, 9}
        mask = tr.nodes["y"]["infer"][ERASED]
        assert torch.equal(mask, torch.isin(idx, rows))
        assert int(mask.sum()) == 4  # padding rows are not erased
        assert torch.allclose(erased_log_likelihood(tr), exact(rows).reshape(1))


def test_more_erased_rows_than_a_batch_is_a_uniform_subset_of_them():
    rows = torch.tensor([0, 1, 3, 4, 6, 8])
    handler = pu.unlearn(model, erased=rows, plate="data")
    pyro.set_rng_seed(0)
    estimates = []
    for _ in range(2000):
        tr = traced(handler, Y, subsample_size=3)
        assert torch.isin(tr.nodes["data"]["value"], rows).all()  # only erased rows
        assert tr.nodes["y"]["infer"][ERASED].all()
        estimates.append(erased_log_likelihood(tr))
    estimates = torch.cat(estimates)
    assert estimates.std() > 0  # a subset of D_e, scaled |D_e|/B: unbiased
    assert abs(estimates.mean() - exact(rows)) < 4 * estimates.std() / 2000**0.5


def test_a_subsample_from_the_user_is_replaced_by_the_erased_rows():
    def indexed(y, idx):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(y), subsample=idx) as i:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[i])

    rows = [1, 4, 7]
    tr = traced(pu.unlearn(indexed, erased=rows, plate="data"), Y, torch.tensor([0, 1, 2]))
    assert tr.nodes["data"]["value"].tolist() == rows
    assert torch.allclose(erased_log_likelihood(tr), exact(rows).reshape(1))
    shares = pu.unlearn(indexed, erased=rows, plate="data", subsample="batch")
    tr = traced(shares, Y, torch.tensor([0, 1, 2]))  # the user's batch, its share: N/B · row 1
    assert torch.allclose(erased_log_likelihood(tr), (10 / 3 * exact([1])).reshape(1))


def test_a_model_fed_batches_cannot_take_the_erased_rows():
    def fed(y, idx):  # the data are the batch already: the plate's indices are not used
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 10, subsample=idx):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"holds 2 rows .* has 3 along dim -1.*subsample='batch'"):
        traced(pu.unlearn(fed, erased=[1, 4], plate="data"), Y[:3], torch.arange(3))
    tr = traced(
        pu.unlearn(fed, erased=[1, 4], plate="data", subsample="batch"), Y[:3], torch.arange(3)
    )
    assert tr.nodes["y"]["infer"][ERASED].tolist() == [False, True, False]


def test_a_guide_that_subsamples_keeps_its_batch():
    """Local latents: the guide's batch is replayed into the model and kept, with its share."""

    def local(y):
        with pyro.plate("data", len(y), subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    def guide(y):
        with pyro.plate("data", len(y), subsample_size=4):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    guide_tr = poutine.trace(guide).get_trace(Y)
    tr = poutine.trace(poutine.replay(pu.unlearn(local, erased=[0, 2], plate="data"), guide_tr))
    tr = tr.get_trace(Y)
    assert torch.equal(tr.nodes["data"]["value"], guide_tr.nodes["data"]["value"])
    assert tr.nodes["y"]["scale"] == 10 / 4
    assert torch.equal(
        tr.nodes["y"]["infer"][ERASED],
        torch.isin(guide_tr.nodes["data"]["value"], torch.tensor([0, 2])),
    )


# -- cells of nested plates ------------------------------------------------------------------------
P, A = 3, 5
CELLS = torch.rand(P, A, generator=torch.Generator().manual_seed(0)) < 0.3
HITS = (torch.arange(P * A).reshape(P, A) % 3 == 0).float()


def baseball(y, players=None, at_bats=None):
    """Per-player ability, players × at-bats Bernoulli (Pyro's baseball example's shape)."""
    phi = pyro.sample("phi", dist.Beta(1.0, 1.0).expand([P, 1]).to_event(2))
    with pyro.plate("players", P, dim=-2, subsample_size=players) as i:
        with pyro.plate("at_bats", A, dim=-1, subsample_size=at_bats) as j:
            pyro.sample("obs", dist.Bernoulli(phi[i]), obs=y[i][:, j])


PHI = torch.tensor([[0.2], [0.5], [0.7]])


def cell_trace(fn, y=HITS, **kwargs):
    tr = poutine.trace(poutine.condition(fn, data={"phi": PHI})).get_trace(y, **kwargs)
    tr.compute_log_prob()
    return tr


def exact_cells(mask):
    return (dist.Bernoulli(PHI).log_prob(HITS) * mask).sum().reshape(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(erased=CELLS, plate=("players", "at_bats")),
        dict(erased=CELLS.T, plate=("at_bats", "players")),  # the tuple's order is the mask's
        dict(erased=CELLS.nonzero(), plate=("players", "at_bats")),  # (K, 2) cell indices
        dict(erased={"obs": CELLS}),  # a mask shaped like the observed site
        dict(erased={"obs": CELLS}, plate={"obs": ("players", "at_bats")}),
    ],
)
def test_cells_of_nested_plates(kwargs):
    tr = cell_trace(pu.unlearn(baseball, **kwargs))
    assert torch.equal(tr.nodes["obs"]["infer"][ERASED].expand(P, A), CELLS)
    assert torch.allclose(erased_log_likelihood(tr), exact_cells(CELLS))


def test_whole_groups_of_nested_plates():
    tr = cell_trace(pu.unlearn(baseball, erased=[0, 2], plate="players"))
    groups = torch.tensor([[True], [False], [True]]).expand(P, A)
    assert torch.allclose(erased_log_likelihood(tr), exact_cells(groups))


def test_cells_of_subsampled_nested_plates():
    """Both plates subsample: their batches become the erased cells' rows and columns, each
    erased cell counted once."""
    for _ in range(3):
        tr = cell_trace(
            pu.unlearn(baseball, erased=CELLS, plate=("players", "at_bats")), players=2, at_bats=4
        )
        assert torch.allclose(erased_log_likelihood(tr), exact_cells(CELLS))
    shares = pu.unlearn(baseball, erased=CELLS, plate=("players", "at_bats"), subsample="batch")
    tr = cell_trace(shares, players=2, at_bats=4)
    i, j = tr.nodes["players"]["value"], tr.nodes["at_bats"]["value"]
    assert torch.equal(tr.nodes["obs"]["infer"][ERASED], CELLS[i][:, j])


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
