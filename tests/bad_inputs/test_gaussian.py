"""Bad inputs to write_gaussian / read_gaussian: refused before anything is written, the guide,
the param store and a frozen posterior left bit-identical."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

import pyro_unlearn as pu
from pyro_unlearn.guides import read_gaussian, write_gaussian

NAN, INF = float("nan"), float("inf")


def model():
    pyro.sample("s", dist.LogNormal(0.0, 1.0))
    pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def _with(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


EYE = torch.eye(3)
CASES = [
    (
        {"loc": _with(torch.zeros(3), 1, NAN)},
        ValueError,
        r"loc has a non-finite value \(nan\) at row 1",
    ),
    ({"loc": torch.zeros(4)}, ValueError, r"loc must have shape \(3,\), got \(4,\)"),
    ({"loc": [0.0, 0.0, 0.0]}, TypeError, r"loc must be a tensor, got list"),
    (
        {"covariance": _with(EYE, (2, 2), INF)},
        ValueError,
        r"covariance has a non-finite value \(inf\) at row 2",
    ),
    (
        {"covariance": torch.eye(2)},
        ValueError,
        r"covariance must have shape \(3, 3\), got \(2, 2\)",
    ),
    ({"covariance": _with(EYE, (0, 1), 0.5)}, ValueError, r"covariance must be symmetric"),
    (
        {"covariance": -EYE},
        ValueError,
        r"covariance is not positive definite \(smallest eigenvalue -1\)",
    ),
    (
        {"covariance": None, "scale": torch.tensor([1.0, 0.0, 1.0])},
        ValueError,
        r"scale must be positive",
    ),
    (
        {"covariance": None, "scale": torch.tensor([1.0, NAN, 1.0])},
        ValueError,
        r"scale has a non-finite value \(nan\) at row 1",
    ),
    ({"covariance": None, "scale": torch.ones(2)}, ValueError, r"scale must have shape \(3,\)"),
    ({"covariance": None}, ValueError, r"pass exactly one of covariance"),
]
IDS = [
    "nan-loc", "loc-length", "loc-list", "inf-covariance", "covariance-size",
    "covariance-asymmetric", "covariance-indefinite", "scale-zero", "nan-scale", "scale-length",
    "neither",
]  # fmt: skip


@pytest.mark.parametrize("kind", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
@pytest.mark.parametrize("change, error, match", CASES, ids=IDS)
def test_write_refuses_before_writing(unchanged, kind, change, error, match):
    guide = kind(model)
    guide()
    posterior = pu.freeze(guide)
    moments = {"loc": torch.zeros(3), "covariance": EYE * 0.5, **change}
    with unchanged(guide, posterior), pytest.raises(error, match=match):
        write_gaussian(guide, **moments)


@pytest.mark.parametrize(
    "make, function, error, match",
    [
        (AutoDelta, read_gaussian, TypeError, r"needs a Gaussian AutoGuide"),
        (AutoNormal, read_gaussian, ValueError, r"has never been run"),
        (AutoLowRankMultivariateNormal, write_gaussian, TypeError, r"writes a live"),
        (AutoMultivariateNormal, "frozen", TypeError, r"writes a live"),
    ],
    ids=["read-delta", "read-untrained", "write-low-rank", "write-frozen"],
)
def test_guides_that_cannot_be_read_or_written_are_refused(unchanged, make, function, error, match):
    guide = make(model)
    if function is not read_gaussian or make is AutoDelta:
        guide()
    posterior = pu.freeze(guide) if function == "frozen" else None
    with unchanged(guide, *([posterior] if posterior else [])), pytest.raises(error, match=match):
        if function is read_gaussian:
            read_gaussian(guide)
        else:
            write_gaussian(posterior or guide, torch.zeros(3), EYE)
