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

The modules: :mod:`~pyro_unlearn.codec.coefficient` (CODEC and L-CODEC, the estimates of T_n),
:mod:`~pyro_unlearn.codec.neighbors` (the nearest neighbours) and
:mod:`~pyro_unlearn.codec.selection` (FOCI).

References:
    M. Azadkia, S. Chatterjee. A Simple Measure of Conditional Dependence. Annals of Statistics,
    2021.

    R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
    Independent Hessians. CVPR 2022.
"""

from .coefficient import METHODS, codec, lcodec
from .neighbors import nearest_neighbors
from .selection import FOCIResult, foci

__all__ = ["METHODS", "FOCIResult", "codec", "foci", "lcodec", "nearest_neighbors"]
