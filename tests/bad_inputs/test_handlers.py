"""Bad inputs of pu.unlearn for cells of nested plates and subsampling plates: each is named
(both shapes for a mask of the wrong shape), and pu.forget on it leaves the live guide, the param
store and the frozen posterior bit-identical."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

import pyro_unlearn as pu

P, A = 3, 5
Y = (torch.arange(P * A).reshape(P, A) % 2).float()
CELLS = torch.zeros(P, A, dtype=torch.bool)
CELLS[0, 1] = CELLS[2, 4] = True
BOTH = ("players", "at_bats")


def baseball(y, players=None):
    phi = pyro.sample("phi", dist.Beta(1.0, 1.0).expand([P, 1]).to_event(2))
    with pyro.plate("players", P, dim=-2, subsample_size=players) as i:
        with pyro.plate("at_bats", A, dim=-1):
            pyro.sample("obs", dist.Bernoulli(phi[i]), obs=y[i])


def run(**kwargs):
    players = kwargs.pop("players", None)
    return poutine.trace(pu.unlearn(baseball, **kwargs)).get_trace(Y, players=players)


CASES = {
    "flat-mask-on-inner-plate": (
        dict(erased=CELLS.flatten(), plate="at_bats"),
        ValueError,
        r"length 15, but plate 'at_bats' of size 5; a mask over the cells .*plate=\(outer, inner\)",
    ),
    "cell-mask-on-one-plate": (
        dict(erased=CELLS, plate="players"),
        ValueError,
        r"1-D for one plate 'players', got shape \(3, 5\); for cells of nested plates",
    ),
    "cell-mask-wrong-shape": (
        dict(erased=CELLS[:, :4], plate=BOTH),
        ValueError,
        r"shape \(3, 4\), but plates \('players', 'at_bats'\) have sizes \(3, 5\)",
    ),
    "cell-mask-transposed": (
        dict(erased=CELLS.T, plate=BOTH),
        ValueError,
        r"shape \(5, 3\), but plates \('players', 'at_bats'\) have sizes \(3, 5\)",
    ),
    "site-mask-wrong-shape": (
        dict(erased={"obs": CELLS[:2]}),
        ValueError,
        r"erased\['obs'\] mask has shape \(2, 5\), but observed site 'obs' has shape \(3, 5\)",
    ),
    "site-mask-on-subsampled-plate": (
        dict(erased={"obs": CELLS[:2]}, players=2),
        ValueError,
        r"plate\(s\) \['players'\] subsample, so positions are not data rows",
    ),
    "flat-mask-on-two-plates": (
        dict(erased=CELLS.flatten(), plate=BOTH),
        ValueError,
        r"2-D mask over plates \('players', 'at_bats'\) or \(K, 2\) cell indices, got "
        r"shape \(15,\)",
    ),
    "cell-indices-three-columns": (
        dict(erased=[[0, 1, 2]], plate=BOTH),
        ValueError,
        r"\(K, 2\) cell indices",
    ),
    "cell-index-out-of-range": (
        dict(erased=[[0, 1], [2, 5]], plate=BOTH),
        IndexError,
        "erased index 5 is out of range for plate 'at_bats' of size 5",
    ),
    "cell-index-duplicate": (dict(erased=[[0, 1], [0, 1]], plate=BOTH), ValueError, "duplicate"),
    "subsampled-cell-mask-wrong-shape": (
        dict(erased=CELLS[:2], plate=BOTH, players=2),
        ValueError,
        r"shape \(2, 5\), but plate 'players' has size 3",
    ),
    "plate-named-twice": (dict(erased=CELLS, plate=("players", "players")), ValueError, "twice"),
    "plate-not-a-name": (dict(erased=[0], plate=3), TypeError, "plate name"),
    "empty-plate-tuple": (dict(erased=[0], plate=()), TypeError, "plate name"),
    "plate-of-a-site-not-a-name": (
        dict(erased={"obs": [0]}, plate={"obs": 1}),
        TypeError,
        r"plate\['obs'\]",
    ),
    "unknown-inner-plate": (
        dict(erased=CELLS, plate=("players", "innings")),
        ValueError,
        "plate 'innings' never appeared",
    ),
    "site-indices-without-plate": (dict(erased={"obs": [0, 1]}), ValueError, "need the plate"),
    "top-level-mask-without-plate": (dict(erased=CELLS), ValueError, "need the plate"),
    "subsample-unknown": (
        dict(erased=[0], plate="players", subsample="all"),
        ValueError,
        r"subsample must be one of \('erased', 'batch'\)",
    ),
    "subsample-not-a-string": (
        dict(erased=[0], plate="players", subsample=True),
        ValueError,
        "subsample must be one of",
    ),
}


@pytest.mark.parametrize("kwargs, error, match", CASES.values(), ids=CASES.keys())
def test_bad_cells(kwargs, error, match):
    with pytest.raises(error, match=match):
        run(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        CASES[k]
        for k in ("cell-mask-wrong-shape", "site-mask-wrong-shape", "cell-index-out-of-range")
    ],
)
def test_forget_on_bad_cells_changes_nothing(kwargs, error, match, unchanged):
    guide = AutoNormal(baseball)
    guide(Y)
    posterior = pu.freeze(guide)
    with torch.no_grad():
        pyro.param("AutoNormal.locs.phi").add_(0.5)  # the live guide moved on from q(θ|D)
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        pu.forget(baseball, guide, Y, posterior=posterior, progress=False, **kwargs)
