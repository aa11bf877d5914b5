"""Nearest neighbours as CODEC reads them: by row chunks of ``torch.cdist``, with exact ties
broken uniformly at random, for many candidate columns at once."""

from __future__ import annotations

import math

import torch

from ..validation import check_positive_int
from ._inputs import as_matrix

__all__ = ["candidate_neighbors", "nearest_neighbors"]

_BUDGET = 1 << 19  # elements of a (candidates, chunk, n) distance block (cache-sized)


def _chunk(num_candidates: int, n: int, chunk_size: int | None) -> int:
    """Rows of the distance matrix at a time: ``chunk_size``, or a block of about ``_BUDGET``."""
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    return max(1, min(n, _BUDGET // max(1, num_candidates * n)))


def candidate_neighbors(
    base: torch.Tensor | None,
    extra: torch.Tensor | None,
    *,
    exact_ties: bool,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> torch.Tensor:
    """The nearest neighbour (other than itself) of every row, in the space of ``base``'s columns
    plus one candidate column of ``extra``, for each candidate: what CODEC's M(i) is for T_n and
    what FOCI compares across candidates.

    Squared distances add over coordinates, so every candidate's distances are the base's plus
    one squared difference: one ``cdist`` per row chunk serves all p candidates. Ties are broken
    uniformly at random (``exact_ties``) or by the first index (``argmin``; for L-CODEC's
    jittered data, where no exact ties remain).

    Arguments:
        base: (n, d) the coordinates every candidate shares, or None.
        extra: (p, n) the candidate columns, or None (then the neighbours in ``base`` alone).
        exact_ties: break ties uniformly at random (CODEC) or by the smallest index (L-CODEC).
        generator: the random tie-breaking's generator (on the data's device).
        chunk_size: rows of the distance matrix at a time (default: a cache-sized block).

    Returns:
        (p, n) int64 indices (p = 1 without ``extra``).

    Example:
        >>> extra = torch.tensor([[0.0, 1.0, 1.5, 5.0], [0.0, 4.0, 1.0, 2.0]])
        >>> candidate_neighbors(None, extra, exact_ties=False, generator=None, chunk_size=None)
        tensor([[1, 2, 1, 2],
                [2, 3, 0, 2]])
    """
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
    points = as_matrix(points, None, "points")
    return candidate_neighbors(
        points, None, exact_ties=random_ties, generator=generator, chunk_size=chunk_size
    )[0]
