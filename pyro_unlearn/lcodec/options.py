"""The setting of an L-CODEC removal: its options, the checked data, the working copy of the
network and its validation score."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..codec import METHODS
from ..validation import (
    check_finite,
    check_in_unit_interval,
    check_nonnegative,
    check_positive,
    check_positive_int,
)
from .newton import LossFn, Objective
from .selection import SELECTIONS
from .slices import Slice, check_point_estimate

__all__ = ["RemovalOptions", "Validation", "validation_score", "working_copy"]

#: Validation data (x_val, y_val), scored by accuracy, or a callable ``model → score``.
Validation = tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], float]


@dataclass
class RemovalOptions:
    """The options of :func:`remove` other than the data, ``num_random`` and the validation
    (same meaning, same defaults), validated on construction."""

    weight_decay: float = 0.0
    selection: str | Sequence[Slice] = "foci"
    layers: Sequence[str] | None = None
    num_perturbations: int = 256
    perturbation_scale: float | None = None
    max_slices: int | None = None
    method: str = "lcodec"
    epsilon: float | None = None
    delta: float = 0.01
    gamma: float | None = None
    damping: float = 0.0
    residual: bool = True
    batch_size: int = 4096
    hessian_chunk: int = 128
    max_block_size: int = 20_000
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self._check_selection()
        self.weight_decay = check_nonnegative("weight_decay", self.weight_decay)
        self.damping = check_nonnegative("damping", self.damping)
        self.num_perturbations = check_positive_int("num_perturbations", self.num_perturbations)
        if self.num_perturbations < 2:
            raise ValueError(f"num_perturbations must be ≥ 2, got {self.num_perturbations}")
        for name in ("batch_size", "hessian_chunk", "max_block_size"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        if self.max_slices is not None:
            self.max_slices = check_positive_int("max_slices", self.max_slices)
        if self.perturbation_scale is not None:
            self.perturbation_scale = check_positive("perturbation_scale", self.perturbation_scale)
        self._check_noise()
        if not isinstance(self.residual, bool):
            raise TypeError(f"residual must be a bool, got {self.residual!r}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(self.generator).__name__}"
            )

    def _check_selection(self) -> None:
        if isinstance(self.selection, str):
            if self.selection not in SELECTIONS:
                raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        elif not isinstance(self.selection, Sequence) or not all(
            isinstance(s, Slice) for s in self.selection
        ):
            raise TypeError(
                f"selection must be one of {SELECTIONS} or a list of Slice, got {self.selection!r}"
            )
        if self.layers is not None and (
            isinstance(self.layers, str)
            or not isinstance(self.layers, Sequence)
            or not all(isinstance(name, str) for name in self.layers)
        ):
            raise TypeError(f"layers must be a list of layer names, got {self.layers!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")

    def _check_noise(self) -> None:
        """ε, δ, γ of the certified-removal noise: all three, or neither ε nor γ."""
        if self.epsilon is None:
            if self.gamma is not None:
                raise ValueError(
                    "gamma is given but epsilon is not: without ε no noise is added (give both "
                    "for an (ε, δ) certified removal, or neither)"
                )
        elif self.gamma is None:
            raise ValueError(
                "epsilon is given but gamma is not: the (ε, δ) noise needs γ, the bound on "
                "‖w' − w*(D_r)‖ from the loss's Lipschitz and strong-convexity constants"
            )
        else:
            self.epsilon = check_positive("epsilon", self.epsilon)
            self.gamma = check_positive("gamma", self.gamma)
        delta = check_in_unit_interval("delta", self.delta)
        if delta in (0.0, 1.0):
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta


def _accuracy(objective: Objective, params, x, y) -> float:
    with torch.no_grad():
        correct = sum(
            (
                functional_call(objective.model, {**objective.fixed, **params}, (x[a:b],)).argmax(
                    -1
                )
                == y[a:b]
            )
            .sum()
            .item()
            for a, b in objective.batches(x.shape[0])
        )
    return correct / x.shape[0]


# -- checks -----------------------------------------------------------------------------------
def _check_data(
    data, device: torch.device, name: str = "data"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` as a pair (x, y) of finite tensors with as many rows, on ``device``."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name} must be a pair (x, y) of tensors, the training data D")
    x, y = data
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError(f"{name} must be a pair (x, y) of tensors")
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError(
            f"{name}'s x and y need rows (dim 0), got shapes {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows, y has {y.shape[0]}")
    if name == "data" and x.shape[0] < 2:
        raise ValueError(f"need at least 2 training samples to remove one, got {x.shape[0]}")
    if name != "data" and x.shape[0] == 0:
        raise ValueError(f"{name} is empty: give at least one row, or no validation")
    if x.device != device or y.device != device:
        raise ValueError(f"{name} on {x.device}/{y.device}, model on {device}: move them together")
    check_finite(f"{name}'s x", x)
    check_finite(f"{name}'s y", y)
    return x, y


def _forward_losses(objective: Objective, params, x, y, name: str) -> torch.Tensor:
    """The per-sample losses of rows (x, y) of ``name``; the network's or the loss's failure on
    them (a shape, a dtype, a class index) raised as a ``ValueError`` that names the data."""
    try:
        with torch.no_grad():
            return objective.losses(params, x, y)
    except (RuntimeError, IndexError, TypeError) as error:
        raise ValueError(
            f"loss_fn(model(x), y) fails on {name} (x {tuple(x.shape)}, {x.dtype}; y "
            f"{tuple(y.shape)}, {y.dtype}): {error}"
        ) from error


def _check_loss(objective: Objective, params, x, y) -> None:
    """One loss per sample, finite on every row of D (one pass over D, no gradient)."""
    losses = _forward_losses(objective, params, x[:2], y[:2], "data")
    if losses.shape != (2,):
        raise ValueError(
            "loss_fn(output, target) must return one loss per sample (e.g. "
            f"F.cross_entropy(..., reduction='none')), got shape {tuple(losses.shape)} for 2"
        )
    losses = torch.cat(
        [
            _forward_losses(objective, params, x[a:b], y[a:b], "data")
            for a, b in objective.batches(x.shape[0])
        ]
    )
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"the model's loss is not finite ({float(losses[row])}) at row {row} of data: the "
            "Newton step needs a model trained to a finite minimum of the loss on D"
        )


def validation_score(
    objective: Objective, validation: Validation | None, params: dict[str, torch.Tensor]
) -> float | None:
    """The score of the network at ``params``: accuracy on (x_val, y_val), or the callable's
    value on ``objective.model`` (which must hold ``params``); None without validation."""
    if validation is None:
        return None
    if callable(validation):
        score = float(validation(objective.model))
        if not math.isfinite(score):
            raise ValueError(f"the validation callable returned {score}: a score must be finite")
        return score
    return _accuracy(objective, params, *validation)


def working_copy(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, torch.Tensor],
    options: RemovalOptions,
    validation: Validation | None,
) -> tuple[nn.Module, bool, Objective, torch.Tensor, torch.Tensor, Validation | None]:
    """A deep copy of ``model`` in eval mode and its objective, with the data and validation
    checked: (copy, the model's training flag, objective, x, y, validation)."""
    check_point_estimate(model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, loss_fn(output, target), got {loss_fn!r}")
    if (
        validation is not None
        and not callable(validation)
        and not isinstance(validation, (tuple, list))
    ):
        raise TypeError(
            f"validation must be a pair (x_val, y_val) or a callable model → score, got "
            f"{type(validation).__name__}"
        )
    work = copy.deepcopy(model)
    training = work.training
    work.eval()
    objective = Objective(work, loss_fn, options.weight_decay, options.batch_size)
    device = next(iter(objective.params().values())).device
    x, y = _check_data(data, device)
    if validation is not None and not callable(validation):
        validation = _check_data(validation, device, "validation")
        _forward_losses(objective, objective.params(), *(v[:1] for v in validation), "validation")
    _check_loss(objective, objective.params(), x, y)
    return work, training, objective, x, y, validation
