"""The inputs of CODEC: the checked response and matrices, Y's ranks, the standardisation of the
columns and L-CODEC's jitter."""

from __future__ import annotations

import math

import torch

from ..validation import check_finite

__all__ = [
    "as_matrix",
    "as_response",
    "check_jitter",
    "jittered",
    "ranks",
    "smallest_gap",
    "standardized",
]


def as_matrix(value: torch.Tensor, n: int | None, name: str) -> torch.Tensor:
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


def check_jitter(jitter: float) -> None:
    """A TypeError unless ``jitter`` is a number, a ValueError unless it is finite and positive."""
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
        raise TypeError(f"jitter must be a positive number, got {jitter!r}")
    if not (math.isfinite(jitter) and jitter > 0):
        raise ValueError(f"jitter must be positive, got {jitter}")


def as_response(y: torch.Tensor) -> torch.Tensor:
    """``y`` as an (n,) finite tensor of at least 2 observations, or an error naming it."""
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


def ranks(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """R_i = #{j: y_j ≤ y_i} and L_i = #{j: y_j ≥ y_i} (int64), exact under ties."""
    y = y.contiguous()
    ordered = y.sort().values
    below = torch.searchsorted(ordered, y, right=True)
    strictly_below = torch.searchsorted(ordered, y, right=False)
    return below, y.shape[0] - strictly_below


def standardized(m: torch.Tensor) -> torch.Tensor:
    """Each column at mean 0, standard deviation 1 (constant columns become 0)."""
    centred = m - m.mean(0)
    std = centred.std(0)
    return centred / torch.where(std > 0, std, torch.ones_like(std))


def smallest_gap(m: torch.Tensor) -> torch.Tensor:
    """The smallest nonzero difference between two values of one column, over all columns (1 if
    every column is constant): two distinct rows are at least this far apart."""
    gaps = m.sort(0).values.diff(dim=0)
    gaps = torch.where(gaps > 0, gaps, torch.full_like(gaps, math.inf)).amin()
    return torch.where(torch.isfinite(gaps), gaps, torch.ones_like(gaps))


def jittered(m: torch.Tensor, jitter: float, generator: torch.Generator | None) -> torch.Tensor:
    """L-CODEC: m + N(0, (jitter · smallest gap)²), ties broken by noise below every distance."""
    noise = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
    return m + jitter * smallest_gap(m) * noise
