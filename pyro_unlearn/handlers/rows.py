"""The erased rows of ``unlearn``: plate names, row specifications (indices, masks, cells of
nested plates) and the masks they make on a site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "WHOLE",
    "as_plates",
    "as_row_spec",
    "as_tensor",
    "batch_mask",
    "coordinates",
    "full_mask",
]

#: Marks "every row of this site" in a row specification.
WHOLE = object()


def as_plates(plate: Any, what: str) -> tuple[str, ...]:
    """A plate name or a non-empty tuple of distinct names, as a tuple."""
    if isinstance(plate, str):
        return (plate,)
    if isinstance(plate, tuple | list) and plate and all(isinstance(p, str) for p in plate):
        if len(set(plate)) != len(plate):
            raise ValueError(f"{what} names a plate twice: {tuple(plate)}")
        return tuple(plate)
    raise TypeError(
        f"{what} must be a plate name or a tuple of plate names (for cells of nested plates), "
        f"got {plate!r}"
    )


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """Erased rows given as a tensor, array, list or range, as a CPU tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray | Sequence | range) and not isinstance(value, str | bytes):
        return torch.as_tensor(np.asarray(value), device="cpu")
    raise TypeError(
        f"{what} must be indices or a boolean mask (tensor, array or list), got {type(value)}"
    )


def as_row_spec(value: Any, what: str, plates: tuple[str, ...] | None) -> torch.Tensor:
    """Validate erased rows: indices or a boolean mask over the plates (over their cells for
    several plates, or ``(K, len(plates))`` cell indices); a mask shaped like the observed site
    when ``plates`` is ``None``."""
    rows = as_tensor(value, what)
    if rows.numel() == 0:
        raise ValueError(f"{what} is empty: there is nothing to erase")
    if rows.dtype != torch.bool and (rows.is_floating_point() or rows.is_complex()):
        raise TypeError(f"{what} must be integer indices or a boolean mask, got {rows.dtype}")
    if plates is None and rows.dtype != torch.bool:
        raise ValueError(
            "erased rows need the plate they index: pass plate='<name of the data plate>', or a "
            "boolean mask shaped like the observed site (erased={site: mask})"
        )
    k = 1 if plates is None else len(plates)
    if rows.dtype == torch.bool:
        fits = rows.dim() >= 1 if plates is None else rows.dim() == k
    else:
        fits = rows.dim() == 1 if k == 1 else rows.dim() == 2 and rows.shape[1] == k
    if not fits:
        if k == 1:
            raise ValueError(
                f"{what} must be 1-D for one plate {plates[0]!r}, got shape "
                f"{tuple(rows.shape)}; for cells of nested plates pass plate=(outer, inner), or "
                "erased={site: mask} shaped like the observed site"
            )
        raise ValueError(
            f"{what} must be a {k}-D mask over plates {plates} or (K, {k}) cell indices, got "
            f"shape {tuple(rows.shape)}"
        )
    if rows.dtype == torch.bool:
        if not bool(rows.any()):
            raise ValueError(
                f"{what} is an all-False mask (shape {tuple(rows.shape)}): the erased set is empty"
            )
        return rows
    if bool((rows < 0).any()):
        raise ValueError(f"{what} has negative indices; give positions 0..N-1 in the plate")
    if rows.unique(dim=0).shape[0] != rows.shape[0]:
        raise ValueError(f"{what} has duplicate indices: each erased row must be named once")
    return rows.long()


def full_mask(
    rows: torch.Tensor, plates: tuple[str, ...], sizes: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """The erased rows (cells) as a boolean mask of shape ``sizes``, the plates' full sizes."""
    if rows.dtype == torch.bool:
        if tuple(rows.shape) != sizes:
            if len(plates) == 1:
                raise ValueError(
                    f"erased mask has length {rows.numel()}, but plate {plates[0]!r} of size "
                    f"{sizes[0]}"
                    + (
                        "; a mask over the cells of nested plates is shaped like them and "
                        "needs plate=(outer, inner)"
                        if rows.numel() % max(sizes[0], 1) == 0 and rows.numel() > sizes[0]
                        else ""
                    )
                )
            raise ValueError(
                f"erased mask has shape {tuple(rows.shape)}, but plates {plates} have sizes {sizes}"
            )
        return rows.to(device)
    cells = rows.reshape(len(rows), -1)
    for axis, (plate, size) in enumerate(zip(plates, sizes, strict=True)):
        largest = int(cells[:, axis].max())
        if largest >= size:
            raise IndexError(
                f"erased index {largest} is out of range for plate {plate!r} of size {size}"
            )
    mask = torch.zeros(sizes, dtype=torch.bool, device=device)
    mask[tuple(cells.to(device).T)] = True
    return mask


def coordinates(rows: torch.Tensor, axis: int, size: int, plate: str) -> torch.Tensor:
    """The distinct positions along one plate (``axis`` of the row spec) of the erased cells."""
    if rows.dtype == torch.bool:
        if rows.shape[axis] != size:
            raise ValueError(
                f"erased mask has shape {tuple(rows.shape)}, but plate {plate!r} has size {size}"
                if rows.dim() > 1
                else f"erased mask has length {rows.numel()}, but plate {plate!r} of size {size}"
            )
        return rows.nonzero()[:, axis].unique()
    coordinates = rows.reshape(len(rows), -1)[:, axis].unique()
    if int(coordinates.max()) >= size:
        raise IndexError(
            f"erased index {int(coordinates.max())} is out of range for plate {plate!r} of "
            f"size {size}"
        )
    return coordinates


def batch_mask(full_mask: torch.Tensor, frames: list, indices: list) -> torch.Tensor:
    """The full mask at the batch's indices (``None``: all), its axes moved to the frames'
    batch dims so that it broadcasts against the site's ``log_prob``."""
    mask = full_mask
    for axis, index in enumerate(indices):
        if index is not None:
            mask = mask.index_select(axis, index.to(mask.device))
    order = sorted(range(len(frames)), key=lambda axis: frames[axis].dim)
    mask = mask.permute(order)
    shape = [1] * -frames[order[0]].dim
    for axis in order:
        shape[frames[axis].dim] = mask.shape[order.index(axis)]
    return mask.reshape(shape)
