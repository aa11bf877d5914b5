"""The CODEC estimate T_n(Y, Z | X) of Azadkia and Chatterjee, and L-CODEC, its jittered variant."""

from __future__ import annotations

import math

import torch

from ._inputs import as_matrix, as_response, check_jitter, jittered, ranks, standardized
from .neighbors import candidate_neighbors

__all__ = ["METHODS", "codec", "lcodec"]

#: The estimators: "codec" (exact tie-breaking) and "lcodec" (jittered, Mehta et al. 2022).
METHODS = ("codec", "lcodec")


def _statistic(
    y: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor | None,
    *,
    method: str,
    generator: torch.Generator | None,
    standardize: bool,
    jitter: float,
    chunk_size: int | None,
) -> torch.Tensor:
    y = as_response(y)
    n = y.shape[0]
    z = as_matrix(z, n, "z")
    x = None if x is None else as_matrix(x, n, "x")
    dtype = z.dtype if x is None else torch.promote_types(z.dtype, x.dtype)
    if z.device != y.device or (x is not None and x.device != y.device):
        raise ValueError("y, z and x must be on the same device")
    check_jitter(jitter)
    points = z if x is None else torch.cat([x.to(dtype), z.to(dtype)], dim=1)
    if standardize:
        points = standardized(points)
    if method == "lcodec":
        points = jittered(points, jitter, generator)
    kw = dict(exact_ties=method == "codec", generator=generator, chunk_size=chunk_size)
    R, L = ranks(y)
    M = candidate_neighbors(points, None, **kw)[0]
    joint = torch.minimum(R, R[M]).sum()
    if x is None:
        num = n * joint - L.square().sum()
        den = (L * (n - L)).sum()
    else:
        N = candidate_neighbors(points[:, : x.shape[1]], None, **kw)[0]
        alone = torch.minimum(R, R[N]).sum()
        num, den = joint - alone, R.sum() - alone
    out = num.double() / den.double()
    return torch.where(den > 0, out, torch.full_like(out, math.nan)).to(dtype)


def codec(
    y: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    standardize: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The CODEC estimate T_n(Y, Z | X) (or T_n(Y, Z) when ``x`` is None), nearest-neighbour ties
    broken uniformly at random, as Azadkia and Chatterjee define it.

    .. math:: T_n(Y, Z | X) = \\frac{Σ_i [\\min(R_i, R_{M(i)}) − \\min(R_i, R_{N(i)})]}
              {Σ_i [R_i − \\min(R_i, R_{N(i)})]}

    with R_i the rank of Y_i, N(i) the nearest neighbour of X_i and M(i) that of (X_i, Z_i).

    Arguments:
        y: (n,) the response.
        z: (n,) or (n, q) the variables whose extra explanatory power is measured.
        x: (n,) or (n, p) the conditioning variables, or None.
        generator: the random tie-breaking's generator (on the data's device).
        standardize: scale every column of X and Z to unit standard deviation first (the
            statistic depends on the relative scale of the coordinates).
        chunk_size: rows of the distance matrix at a time (default: about 500k entries a block).

    Returns:
        a 0-dim tensor on the data's device: ≈ 0 when Y ⊥ Z | X, ≈ 1 when Y is a function of
        (X, Z); NaN when Y is constant or already a function of X on the sample.

    References:
        M. Azadkia, S. Chatterjee. A Simple Measure of Conditional Dependence. Annals of
        Statistics, 2021.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, z = torch.rand(2, 500, generator=g, dtype=torch.float64)
        >>> float(codec(x + z, z, x, generator=g)) > 0.6  # Y is a function of (X, Z)
        True
        >>> abs(float(codec(x, z, generator=g))) < 0.2  # Y ⊥ Z
        True
    """
    return _statistic(
        y,
        z,
        x,
        method="codec",
        generator=generator,
        standardize=standardize,
        jitter=1.0,
        chunk_size=chunk_size,
    )


def lcodec(
    y: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    standardize: bool = True,
    jitter: float = 1e-3,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """L-CODEC: :func:`codec` on (X + ξ, Z + ξ'), the jitter ξ ~ N(0, s²) with s = ``jitter`` ×
    the smallest nonzero gap between values of a coordinate, so that ties disappear and nearest
    neighbours are plain ``argmin`` s. Same arguments as :func:`codec`; ``generator`` draws the
    jitter.

    Returns:
        a 0-dim tensor, as :func:`codec`.

    References:
        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022 (eq. 8).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randint(0, 3, (2000,), generator=g).double()  # heavily tied
        >>> z = torch.randint(0, 3, (2000,), generator=g).double()
        >>> float(lcodec(x + 3 * z, z, x, generator=g))  # Y a function of (X, Z): exactly 1
        1.0
    """
    return _statistic(
        y,
        z,
        x,
        method="lcodec",
        generator=generator,
        standardize=standardize,
        jitter=jitter,
        chunk_size=chunk_size,
    )
