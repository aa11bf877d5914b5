"""CODEC, L-CODEC and FOCI: the Azadkia–Chatterjee conditional dependence coefficient and the
forward feature selection built on it, vectorised on the input's device.

With R_i = #{j: Y_j ≤ Y_i}, L_i = #{j: Y_j ≥ Y_i}, N(i) the nearest neighbour of X_i among the
other X_j and M(i) that of (X_i, Z_i) (Euclidean; ties broken uniformly at random):

    T_n(Y, Z | X) = Σ_i [min(R_i, R_M(i)) − min(R_i, R_N(i))] / Σ_i [R_i − min(R_i, R_N(i))]
    T_n(Y, Z)     = Σ_i [n min(R_i, R_M(i)) − L_i²] / Σ_i L_i (n − L_i)      (no X; M on Z alone)

T_n → T(Y, Z | X) ∈ [0, 1]: 0 iff Y ⊥ Z | X, 1 iff Y is a measurable function of (X, Z)
(Azadkia & Chatterjee 2021). It is NaN when the denominator vanishes (Y constant, or already a
function of X on the sample: there is nothing left for Z to explain).

**L-CODEC** (Mehta et al. 2022) adds a tiny Gaussian jitter to X and Z, its scale a fraction
``jitter`` of the smallest nonzero gap between the values of any coordinate (a lower bound on the
smallest nonzero distance between points), so that nearest neighbours of distinct points stay
as they were (unless two distances differ by less than the jitter) while ties become distinct,
broken at random: a plain ``argmin`` then replaces CODEC's random tie-breaking (a random draw
and a running count over the tied candidates of every row that has ties), whose cost grows with
the ties in the data. Unlike the paper's eq. 8, Y is not jittered: its ranks handle ties exactly
at O(n log n) cost, and jittering Y would change the rank convention of T_n.

**FOCI** (feature ordering by conditional independence): greedily add the feature Z_j maximising
T_n(Y, Z_j | selected), stop when the best value is ≤ 0.

Nearest neighbours come from ``torch.cdist`` in row chunks (``chunk_size`` rows at a time, so
memory is O(chunk · n) per candidate), with the distances computed by differences (not the
matrix-product shortcut) so that equal points are at distance exactly 0 and ties are exact.

References:
    M. Azadkia, S. Chatterjee. A Simple Measure of Conditional Dependence. Annals of Statistics,
    2021.

    R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
    Independent Hessians. CVPR 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validation import check_finite, check_nonnegative_int, check_positive_int

__all__ = ["METHODS", "FOCIResult", "codec", "foci", "lcodec", "nearest_neighbors"]

#: The estimators: "codec" (exact tie-breaking) and "lcodec" (jittered, Mehta et al. 2022).
METHODS = ("codec", "lcodec")
_BUDGET = 1 << 19  # elements of a (candidates, chunk, n) distance block (cache-sized)


def _matrix(value: torch.Tensor, n: int | None, name: str) -> torch.Tensor:
    """``value`` as a floating (n, d) matrix, or a ValueError naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() == 1:
        value = value[:, None]
    if value.dim() != 2:
        raise ValueError(f"{name} must be (n,) or (n, d), got shape {tuple(value.shape)}")
    if n is not None and value.shape[0] != n:
        raise ValueError(f"{name} has {value.shape[0]} rows, y has {n}")
    if value.shape[1] == 0:
        raise ValueError(f"{name} has no columns")
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    check_finite(name, value)
    return value


def _check_jitter(jitter: float) -> None:
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
        raise TypeError(f"jitter must be a positive number, got {jitter!r}")
    if not (math.isfinite(jitter) and jitter > 0):
        raise ValueError(f"jitter must be positive, got {jitter}")


def _response(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise ValueError(f"y must be (n,), got shape {tuple(y.shape)}")
    if y.shape[0] < 2:
        raise ValueError(f"CODEC needs at least 2 observations, got {y.shape[0]}")
    check_finite("y", y)
    return y


def _ranks(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R_i = #{j: y_j ≤ y_i} and L_i = #{j: y_j ≥ y_i} (int64), exact under ties."""
    y = y.contiguous()
    ordered = y.sort().values
    below = torch.searchsorted(ordered, y, right=True)
    strictly_below = torch.searchsorted(ordered, y, right=False)
    return below, y.shape[0] - strictly_below


def _standardized(m: torch.Tensor) -> torch.Tensor:
    """Each column at mean 0, standard deviation 1 (constant columns become 0)."""
    centred = m - m.mean(0)
    std = centred.std(0)
    return centred / torch.where(std > 0, std, torch.ones_like(std))


def _smallest_gap(m: torch.Tensor) -> torch.Tensor:
    """The smallest nonzero difference between two values of one column, over all columns (1 if
    every column is constant): two distinct rows are at least this far apart."""
    gaps = m.sort(0).values.diff(dim=0)
    gaps = torch.where(gaps > 0, gaps, torch.full_like(gaps, math.inf)).amin()
    return torch.where(torch.isfinite(gaps), gaps, torch.ones_like(gaps))


def _jittered(m: torch.Tensor, jitter: float, generator: torch.Generator | None) -> torch.Tensor:
    """L-CODEC: m + N(0, (jitter · smallest gap)²), ties broken by noise below every distance."""
    noise = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
    return m + jitter * _smallest_gap(m) * noise


def _chunk(num_candidates: int, n: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    return max(1, min(n, _BUDGET // max(1, num_candidates * n)))


def _nearest(
    base: torch.Tensor | None,
    extra: torch.Tensor | None,
    *,
    exact_ties: bool,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """Nearest neighbour (other than itself) of every row, in the space of ``base``'s columns
    plus one column of ``extra``, for each of ``extra``'s rows: ``base`` (n, d) or None,
    ``extra`` (p, n) candidate columns or None. Returns (p, n) indices (p = 1 without ``extra``).

    Squared distances add over coordinates, so every candidate's distances are the base's plus
    one squared difference: one ``cdist`` per row chunk serves all p candidates. Ties are broken
    uniformly at random (``exact_ties``) or by the first index (``argmin``; for L-CODEC's
    jittered data, where no exact ties remain)."""
    n = (base if base is not None else extra.T).shape[0]
    ref = base if base is not None else extra
    num = 1 if extra is None else extra.shape[0]
    step = _chunk(num, n, chunk_size)
    out = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        rows = torch.arange(start, stop, device=ref.device)
        if base is not None:
            d2 = torch.cdist(
                base[start:stop], base, compute_mode="donot_use_mm_for_euclid_dist"
            ).square_()
        if extra is None:
            d2 = d2[None]
        else:
            diff = (extra[:, start:stop, None] - extra[:, None, :]).square_()
            d2 = diff if base is None else diff.add_(d2)
        d2[:, rows - start, rows] = math.inf  # not one's own neighbour
        if not exact_ties:
            out.append(d2.argmin(-1))
            continue
        nearest, index = d2.min(-1)
        tie = d2 == nearest[..., None]
        count = tie.sum(-1)
        tied = count > 1
        # The random tie-breaking is paid for only on rows with ties (one host sync per chunk):
        # this is the cost that grows with the ties in the data, and that L-CODEC avoids.
        if bool(tied.any()):
            which = tied.nonzero(as_tuple=True)
            tie, count = tie[which], count[which]
            u = torch.rand(count.shape, generator=generator, device=ref.device, dtype=d2.dtype)
            pick = torch.minimum((u * count).long(), count - 1) + 1  # the pick-th tie, uniformly
            chosen = tie & (tie.cumsum(-1, dtype=torch.int32) == pick[:, None])
            index[which] = chosen.to(torch.uint8).argmax(-1)
        out.append(index)
    return torch.cat(out, dim=-1)


def nearest_neighbors(
    points: torch.Tensor,
    *,
    random_ties: bool = True,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The nearest neighbour (Euclidean, other than itself) of every row of ``points``, as CODEC
    reads it: ties broken uniformly at random, or by the first index (``random_ties=False``).

    Arguments:
        points: (n, d) the points.
        random_ties: break ties uniformly at random (CODEC) or by the smallest index (L-CODEC,
            whose jittered data have no ties).
        generator: the random tie-breaking's generator (on the points' device).
        chunk_size: rows of the distance matrix at a time.

    Returns:
        (n,) int64 indices N(i) ≠ i.

    Example:
        >>> nearest_neighbors(torch.tensor([[0.0], [1.0], [1.5], [5.0]]))
        tensor([1, 2, 1, 2])
    """
    points = _matrix(points, None, "points")
    return _nearest(
        points, None, exact_ties=random_ties, generator=generator, chunk_size=chunk_size
    )[0]


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
    y = _response(y)
    n = y.shape[0]
    z = _matrix(z, n, "z")
    x = None if x is None else _matrix(x, n, "x")
    dtype = z.dtype if x is None else torch.promote_types(z.dtype, x.dtype)
    if z.device != y.device or (x is not None and x.device != y.device):
        raise ValueError("y, z and x must be on the same device")
    _check_jitter(jitter)
    points = z if x is None else torch.cat([x.to(dtype), z.to(dtype)], dim=1)
    if standardize:
        points = _standardized(points)
    if method == "lcodec":
        points = _jittered(points, jitter, generator)
    kw = dict(exact_ties=method == "codec", generator=generator, chunk_size=chunk_size)
    R, L = _ranks(y)
    M = _nearest(points, None, **kw)[0]
    joint = torch.minimum(R, R[M]).sum()
    if x is None:
        num = n * joint - L.square().sum()
        den = (L * (n - L)).sum()
    else:
        N = _nearest(points[:, : x.shape[1]], None, **kw)[0]
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


@dataclass
class FOCIResult:
    """What :func:`foci` returns.

    Attributes:
        selected: column indices of ``features`` in the order FOCI picked them.
        coefficients: T_n(Y, Z_j | previously selected) of each pick (the first is T_n(Y, Z_j));
            a pick forced by ``min_features`` may have a value ≤ 0.
        stopped: why the selection ended: "no_gain" (the best T_n ≤ 0), "explained" (Y is a
            function of the selected features on the sample), "max_features" or "exhausted".
    """

    selected: list[int]
    coefficients: list[float]
    stopped: str


def foci(
    y: torch.Tensor,
    features: torch.Tensor,
    *,
    max_features: int | None = None,
    min_features: int = 0,
    method: str = "lcodec",
    generator: torch.Generator | None = None,
    standardize: bool = True,
    jitter: float = 1e-3,
    chunk_size: int | None = None,
) -> FOCIResult:
    """FOCI forward selection: S ← S ∪ {argmax_j T_n(Y, Z_j | Z_S)} while that maximum is > 0.

    Maximising T_n(Y, Z_j | Z_S) over j is maximising Σ_i min(R_i, R_{M_j(i)}), M_j the nearest
    neighbour in (Z_S, Z_j); all candidates of a step share one distance computation of Z_S.
    With ``method="lcodec"`` (L-FOCI) the features are jittered once, as in :func:`lcodec`.

    Arguments:
        y: (n,) the response.
        features: (n, p) the candidate features.
        max_features: stop after this many (default: p).
        min_features: select at least this many even when T_n ≤ 0 (e.g. 1: always the feature
            most dependent with Y).
        method: "lcodec" (jittered, plain argmin) or "codec" (random tie-breaking).
        generator, standardize, jitter, chunk_size: as for :func:`lcodec`.

    Returns:
        a :class:`FOCIResult`.

    References:
        M. Azadkia, S. Chatterjee. A Simple Measure of Conditional Dependence. Annals of
        Statistics, 2021 (FOCI).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> features = torch.randn(1000, 6, generator=g, dtype=torch.float64)
        >>> y = features[:, 4] + features[:, 1] ** 2  # depends on columns 4 and 1 only
        >>> foci(y, features, generator=g).selected
        [4, 1]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    y = _response(y)
    n = y.shape[0]
    features = _matrix(features, n, "features")
    if features.device != y.device:
        raise ValueError("y and features must be on the same device")
    p = features.shape[1]
    max_features = (
        p if max_features is None else check_nonnegative_int("max_features", max_features)
    )
    min_features = check_nonnegative_int("min_features", min_features)
    if not 0 <= min_features <= max_features <= p:
        raise ValueError(
            f"need 0 ≤ min_features ≤ max_features ≤ {p} (the number of features), got "
            f"min_features={min_features}, max_features={max_features}"
        )
    _check_jitter(jitter)
    if standardize:
        features = _standardized(features)
    if method == "lcodec":
        features = _jittered(features, jitter, generator)
    R, L = _ranks(y)
    total_R, sum_L2, den0 = R.sum(), L.square().sum(), (L * (n - L)).sum()
    selected: list[int] = []
    coefficients: list[float] = []
    remaining = list(range(p))
    alone = None  # Σ_i min(R_i, R_N(i)), N the nearest neighbour in the selected features
    stopped = "max_features" if max_features < p else "exhausted"
    while remaining and len(selected) < max_features:
        base = features[:, selected] if selected else None
        M = _nearest(
            base,
            features[:, remaining].T,
            exact_ties=method == "codec",
            generator=generator,
            chunk_size=chunk_size,
        )
        joint = torch.minimum(R[None], R[M]).sum(-1)  # (candidates,)
        best = int(joint.argmax())
        if alone is None:
            num, den = n * joint[best] - sum_L2, den0
        else:
            num, den = joint[best] - alone, total_R - alone
        if int(den) <= 0:
            stopped = "explained"
            break
        value = float(num) / float(den)
        if value <= 0 and len(selected) >= min_features:
            stopped = "no_gain"
            break
        selected.append(remaining.pop(best))
        coefficients.append(value)
        alone = joint[best]
    return FOCIResult(selected, coefficients, stopped)
