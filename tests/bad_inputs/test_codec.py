"""Bad inputs to CODEC, L-CODEC and FOCI: each refused with an error that names it; the inputs
are left as they were."""

from __future__ import annotations

import pytest
import torch

from pyro_unlearn.codec import codec, foci, lcodec

NAN, INF = float("nan"), float("inf")


def _with(value, row, entry):
    value = value.clone()
    value[row] = entry
    return value


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, generator=g), torch.randn(10, 2, generator=g)


CASES = [
    ("nan-y", lambda y, z: codec(_with(y, 4, NAN), z), ValueError, r"y has .*\(nan\) at row 4"),
    ("inf-z", lambda y, z: codec(y, _with(z, 6, INF)), ValueError, r"z has .*\(inf\) at row 6"),
    (
        "nan-x",
        lambda y, z: codec(y, z, _with(z, 2, NAN)),
        ValueError,
        r"x has .*\(nan\) at row 2",
    ),
    (
        "nan-features",
        lambda y, z: foci(y, _with(z, 3, NAN)),
        ValueError,
        r"features has .*\(nan\) at row 3",
    ),
    ("z-short", lambda y, z: codec(y, z[:9]), ValueError, "z has 9 rows, y has 10"),
    ("y-2d", lambda y, z: codec(z, y), ValueError, r"y must be \(n,\)"),
    ("one-row", lambda y, z: codec(y[:1], z[:1]), ValueError, "at least 2 observations"),
    ("z-list", lambda y, z: codec(y, [1.0] * 10), TypeError, "z must be a torch.Tensor"),
    ("jitter-0", lambda y, z: lcodec(y, z, jitter=0.0), ValueError, "jitter must be positive"),
    ("jitter-nan", lambda y, z: lcodec(y, z, jitter=NAN), ValueError, "jitter must be positive"),
    ("jitter-str", lambda y, z: lcodec(y, z, jitter="a"), TypeError, "jitter must be"),
    ("chunk-0", lambda y, z: codec(y, z, chunk_size=0), ValueError, "chunk_size must be"),
    ("chunk-float", lambda y, z: codec(y, z, chunk_size=1.5), TypeError, "chunk_size must be"),
    ("method", lambda y, z: foci(y, z, method="knn"), ValueError, "method must be one of"),
    ("max-features", lambda y, z: foci(y, z, max_features=3), ValueError, "≤ 2"),
    (
        "max-features-float",
        lambda y, z: foci(y, z, max_features=1.5),
        TypeError,
        "max_features must be an integer ≥ 0",
    ),
    (
        "min-features-negative",
        lambda y, z: foci(y, z, min_features=-1),
        ValueError,
        "min_features must be an integer ≥ 0",
    ),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs_are_named(call, error, match):
    y, z = _data()
    before = (y.clone(), z.clone())
    with pytest.raises(error, match=match):
        call(y, z)
    assert torch.equal(y, before[0]) and torch.equal(z, before[1])
