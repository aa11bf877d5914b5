"""The block P of an L-CODEC removal: the slices whose activations L-FOCI ties to the loss of
the sample to remove, a random block of the same size, or every parameter."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..codec import foci
from .newton import Objective
from .slices import Slice, candidate_layers, collect_activations, layer_slices

__all__ = ["SELECTIONS", "select_block"]

#: How the block P is chosen.
SELECTIONS = ("foci", "random", "all")


def _check_perturbed(losses: torch.Tensor, acts: torch.Tensor, index: int, scale: float) -> None:
    """L-FOCI's inputs finite, or an error that names the perturbation (not the data)."""
    for what, value in (("loss", losses), ("activations", acts)):
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            k = int(bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0, 0])
            raise ValueError(
                f"the network's {what} on perturbed copy {k} of row {index} (x + ξ, "
                f"ξ ~ N(0, {scale:g}²)) is not finite: lower perturbation_scale"
            )


def select_block(
    objective: Objective,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    index: int,
    *,
    selection: str | Sequence[Slice],
    layers: Sequence[str] | None,
    num_perturbations: int,
    perturbation_scale: float | None,
    num_random: int | None,
    max_slices: int | None,
    method: str,
    generator: torch.Generator | None,
) -> tuple[list[Slice] | None, list[float]]:
    r"""The block P for removing the sample ``index`` of (x, y) from the network at ``params``.

    "foci": m = ``num_perturbations`` inputs x_z + ξ_k, ξ_k ~ N(0, σ²), go through the network;
    L-FOCI (:func:`pyro_unlearn.codec.foci`) selects the slices j maximising
    T_n(ℓ, a_j | selected) on (loss, activations), at least one, at most ``max_slices``.
    "random": ``num_random`` slices uniformly (default: as many as FOCI picks). "all": every
    parameter. A list of :class:`Slice` is checked and returned.

    Returns:
        (the slices, or ``None`` for "all"; L-FOCI's coefficients T_n of each pick, FOCI only).

    References:
        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022.

        M. Azadkia, S. Chatterjee. A Simple Measure of Conditional Dependence. Annals of
        Statistics, 2021.
    """
    if selection == "all":
        return None, []
    if not isinstance(selection, str):
        given = list(selection)
        known = set(
            layer_slices(candidate_layers(objective.model, sorted({s.layer for s in given})))
        )
        unknown = [str(s) for s in given if s not in known]
        if not given or unknown:
            raise ValueError(f"the given selection is empty or names unknown slices {unknown}")
        return given, []
    chosen = candidate_layers(objective.model, layers)
    slices = layer_slices(chosen)
    if selection == "random" and num_random is not None:
        k = num_random
        coefficients: list[float] = []
    else:
        if not x.is_floating_point():
            raise TypeError(f"L-FOCI perturbs the inputs: x must be floating, got {x.dtype}")
        scale = perturbation_scale
        if scale is None:
            scale = 0.1 * float(x.float().std(0).mean())
        xz = x[index : index + 1]
        noise = torch.randn(
            (num_perturbations, *xz.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
        )
        perturbed = xz + scale * noise
        target = y[index : index + 1].expand(num_perturbations, *y.shape[1:])
        with torch.no_grad():
            acts, _ = collect_activations(objective.model, perturbed, [n for n, _ in chosen])
            losses = objective.losses(params, perturbed, target)
        _check_perturbed(losses, acts, index, scale)
        limit = len(slices) if max_slices is None else min(max_slices, len(slices))
        result = foci(
            losses, acts, max_features=limit, min_features=1, method=method, generator=generator
        )
        if selection == "foci":
            return [slices[j] for j in result.selected], result.coefficients
        k, coefficients = len(result.selected), []
    if not 1 <= k <= len(slices):
        raise ValueError(f"num_random must be in [1, {len(slices)}], got {k}")
    pick = torch.randperm(len(slices), generator=generator, device=x.device)[:k]
    return [slices[j] for j in sorted(pick.tolist())], coefficients
