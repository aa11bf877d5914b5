"""FOCI, the forward feature selection by conditional dependence of Azadkia and Chatterjee."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_nonnegative_int
from ._inputs import as_matrix, as_response, check_jitter, jittered, ranks, standardized
from .coefficient import METHODS
from .neighbors import candidate_neighbors

__all__ = ["FOCIResult", "foci"]


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


def _checked(
    y: torch.Tensor,
    features: torch.Tensor,
    max_features: int | None,
    min_features: int,
    method: str,
    jitter: float,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """:func:`foci`'s arguments checked: y (n,), features (n, p), the feature counts as ints."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    y = as_response(y)
    n = y.shape[0]
    features = as_matrix(features, n, "features")
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
    check_jitter(jitter)
    return y, features, max_features, min_features


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
    With ``method="lcodec"`` (L-FOCI) the features are jittered once, as in
    :func:`~pyro_unlearn.codec.coefficient.lcodec`.

    Arguments:
        y: (n,) the response.
        features: (n, p) the candidate features.
        max_features: stop after this many (default: p).
        min_features: select at least this many even when T_n ≤ 0 (e.g. 1: always the feature
            most dependent with Y).
        method: "lcodec" (jittered, plain argmin) or "codec" (random tie-breaking).
        generator, standardize, jitter, chunk_size: as for
            :func:`~pyro_unlearn.codec.coefficient.lcodec`.

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
    y, features, max_features, min_features = _checked(
        y, features, max_features, min_features, method, jitter
    )
    n, p = features.shape
    if standardize:
        features = standardized(features)
    if method == "lcodec":
        features = jittered(features, jitter, generator)
    R, L = ranks(y)
    total_R, sum_L2, den0 = R.sum(), L.square().sum(), (L * (n - L)).sum()
    selected: list[int] = []
    coefficients: list[float] = []
    remaining = list(range(p))
    alone = None  # Σ_i min(R_i, R_N(i)), N the nearest neighbour in the selected features
    stopped = "max_features" if max_features < p else "exhausted"
    while remaining and len(selected) < max_features:
        base = features[:, selected] if selected else None
        M = candidate_neighbors(
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
