"""The input checks shared by the closed forms, and the error a failed division raises."""

from __future__ import annotations

from typing import Any

import torch

from ..validation import check_finite

__all__ = [
    "ERASED",
    "PRIOR",
    "NotNormalizableError",
    "broadcast",
    "check_not_empty",
    "common_dtype",
    "as_counts",
    "floating",
    "gaussian_parameters",
    "inverse_variance",
    "normalizable",
    "positive",
    "real_tensor",
]

#: Why a division by the erased data's likelihood left no distribution.
ERASED = (
    "the erased data carry more information than q(θ|D) holds — were they ever in the posterior, "
    "and is q(θ|D) the exact posterior rather than an approximation?"
)
#: Why Bayes' rule left no distribution.
PRIOR = "the data do not identify θ under this prior (is the prior precision positive definite?)"


class NotNormalizableError(ValueError):
    """q(θ|D)/p(D_e|θ) is not a distribution: the division left no valid posterior."""


def normalizable(value: torch.Tensor, what: str) -> torch.Tensor:
    """``value``, or a :class:`NotNormalizableError` naming ``what`` unless it is positive."""
    if not bool((value > 0).all()):
        raise NotNormalizableError(f"{what} = {float(value.min()):.3g} ≤ 0: {ERASED}")
    return value


def real_tensor(
    value: Any, name: str, like: torch.Tensor | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``value`` as a real tensor (on ``like``'s device), checked finite: a ``TypeError`` for
    anything that is not numbers, a ``ValueError`` naming ``name`` and the first bad row."""
    if not isinstance(value, torch.Tensor):
        try:
            device = None if like is None else like.device
            value = torch.as_tensor(value, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be a number or a tensor, got {value!r} ({type(value).__name__})"
            ) from None
    elif dtype is not None:
        value = value.to(dtype)
    if value.dtype.is_complex:
        raise TypeError(f"{name} must be real, got a {value.dtype} tensor")
    check_finite(name, value)
    return value


def positive(
    value: Any, name: str, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``value`` as a finite tensor on ``like``'s device, or a ValueError unless it is positive."""
    value = real_tensor(value, name, like, dtype)
    if not bool((value > 0).all()):
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def floating(x: torch.Tensor) -> torch.Tensor:
    """``x``, in the default floating dtype unless it is floating already."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def check_not_empty(data: torch.Tensor, name: str) -> None:
    """A ValueError if the erased ``data`` have no rows."""
    if data.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows): there is nothing to erase")


def as_counts(x: Any, name: str) -> torch.Tensor:
    """``x`` as an (N, ...) tensor of non-negative integers, or a ValueError."""
    what = f"{name} must be an (N, ...) tensor of non-negative integers"
    try:
        x = real_tensor(x, name)
    except ValueError as e:  # non-finite: named as such
        raise ValueError(f"{e}; {what}") from None
    x = x.long() if x.dtype == torch.bool else x
    whole = x == x.round() if x.is_floating_point() else torch.ones_like(x, dtype=torch.bool)
    if x.dim() == 0 or not bool((whole & (x >= 0)).all()):
        raise ValueError(f"{what}, got {x}")
    return x


def broadcast(x: Any, like: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` broadcast to ``like``'s shape, or a ValueError naming ``name``."""
    x = real_tensor(x, name, like)
    try:
        return x.broadcast_to(like.shape)
    except RuntimeError as e:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to the data's shape "
            f"{tuple(like.shape)}"
        ) from e


def common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted floating dtype of ``tensors`` (the default dtype if none is floating)."""
    dtype = torch.get_default_dtype()
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    for other in floating[1:]:
        floating[0] = torch.promote_types(floating[0], other)
    return floating[0] if floating else dtype


def gaussian_parameters(
    loc: Any, precision: Any, erased: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """μ and Λ as finite tensors, Λ symmetric; for q(θ|D) (``erased``) also positive definite."""
    loc, precision = real_tensor(loc, "loc"), real_tensor(precision, "precision")
    if precision.dim() >= 2:
        scale = float(precision.abs().max()) if precision.numel() else 0.0
        eps = torch.finfo(common_dtype(precision)).eps
        gap = float((precision - precision.mT).abs().max()) if precision.numel() else 0.0
        # eps^¼: tolerates the rounding of an inverted Σ, not a wrong matrix
        if precision.shape[-1] != precision.shape[-2] or gap > eps**0.25 * scale:
            raise ValueError(
                f"precision must be a symmetric (D, D) matrix, got shape "
                f"{tuple(precision.shape)} with |Λ − Λᵀ| up to {gap:.3g}"
            )
    if erased:
        square = precision.reshape(1, 1) if precision.dim() == 0 else precision
        if square.dim() == 2 and square.shape[0] == square.shape[1] and square.numel():
            square = floating(square)
            if int(torch.linalg.cholesky_ex(0.5 * (square + square.mT))[1]) != 0:
                smallest = float(torch.linalg.eigvalsh(0.5 * (square + square.mT))[0])
                raise ValueError(
                    f"the precision of q(θ|D) is not positive definite (smallest eigenvalue "
                    f"{smallest:.3g}): pass Λ = Σ⁻¹ of a Gaussian posterior"
                )
    return loc, precision


def inverse_variance(noise_scale: Any, like: torch.Tensor, per_row: bool = True) -> torch.Tensor:
    """1/σ², σ a positive scalar, or (``per_row``) one per row of ``like``."""
    sigma = positive(noise_scale, "noise_scale", like, like.dtype)
    if sigma.numel() == 1:
        sigma = sigma.reshape(())
    elif not (per_row and sigma.shape == like.shape[:1]):
        rows = f" or ({like.shape[0]},), one per row" if per_row else ""
        raise ValueError(f"noise_scale must be a scalar{rows}, got shape {tuple(sigma.shape)}")
    return 1.0 / sigma**2
