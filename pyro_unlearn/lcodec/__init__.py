"""Deep unlearning of point-estimate networks by L-CODEC block selection and a block Newton step.

A network ŵ minimises F(w) = (1/n) Σ_i f(w; z_i) on D, f(w; z) = ℓ(w; z) + (λ_wd/2) ‖w‖². To
remove z ∈ D:

1. **Perturb**: m copies x_z + ξ_k, ξ_k ~ N(0, σ²), of the input of z go through the network;
   forward hooks record every *slice*'s activation (a Linear layer's output unit j ↔ its weight
   row W[j, :] and bias b[j]; a Conv layer's filter j ↔ W[j] and b[j], activation averaged over
   positions) next to the loss ℓ(w; (x_z + ξ_k, y_z)).
2. **Select** the block P of slices: L-FOCI (:func:`pyro_unlearn.codec.foci`) on (loss,
   activations), "random" (as many slices, uniformly) or "all" (every parameter: the full
   Hessian update of Sekhari et al. 2021).
3. **Block Newton step** on P only, everything else unchanged::

       H'_P = (n H_P − H_P(z)) / (n − 1),      H_P = ∇²_P F(ŵ),  H_P(z) = ∇²_P f(ŵ; z)
       w_P ← w_P + H'_P⁻¹ ∇_P f(ŵ; z) / (n − 1)

   H'_P is the Hessian of F_r(w) = (1/(n−1)) Σ_{i≠z} f(w; z_i) on the block, and at a minimiser
   of F the gradient of F_r is −∇f(ŵ; z)/(n − 1): the step is Newton's step towards the
   minimiser of the loss on D_r = D \\ {z}. A non-positive-definite H'_P (non-convex networks) is
   shifted by a multiple of the identity, to smallest eigenvalue ``|λ_min|`` (the shift is
   reported).
4. **Noise** (optional): w_P ← w_P + N(0, σ_ε² I), σ_ε = (γ/ε) √(2 ln(1.25/δ)) for an (ε, δ)
   certified removal, γ a bound on the distance between the Newton estimate and the retrained
   minimiser (from the loss's Lipschitz and strong-convexity constants; weight decay gives the
   strong convexity).

The residual gradient norm ‖∇F_r(w')‖ on D_r measures what the step left undone.

The input model is never modified: :func:`remove` and :func:`remove_sequentially` work on a deep
copy, and a removal that fails (an error) or is rejected (``max_validation_drop``) leaves that copy
as it was before the removal.

The modules: :mod:`~pyro_unlearn.lcodec.slices` (slices and their activations),
:mod:`~pyro_unlearn.lcodec.selection` (step 2), :mod:`~pyro_unlearn.lcodec.newton` (step 3 and
the noise scale), :mod:`~pyro_unlearn.lcodec.options` (options, checks, the working copy),
:mod:`~pyro_unlearn.lcodec.removal` (:func:`remove`) and
:mod:`~pyro_unlearn.lcodec.sequential` (:func:`remove_sequentially`).

References:
    R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
    Independent Hessians. CVPR 2022.

    M. Azadkia, S. Chatterjee. A Simple Measure of Conditional Dependence. Annals of
    Statistics, 2021.

    A. Sekhari, J. Acharya, G. Kamath, A. T. Suresh. Remember What You Want to Forget:
    Algorithms for Machine Unlearning. NeurIPS 2021.

    C. Guo, T. Goldstein, A. Hannun, L. van der Maaten. Certified Data Removal from Machine
    Learning Models. ICML 2020.
"""

from .newton import noise_scale
from .removal import RemovalResult, remove
from .selection import SELECTIONS
from .sequential import SequentialRemovalResult, remove_sequentially
from .slices import Slice, collect_activations

__all__ = [
    "SELECTIONS",
    "RemovalResult",
    "SequentialRemovalResult",
    "Slice",
    "collect_activations",
    "noise_scale",
    "remove",
    "remove_sequentially",
]
