"""The setting of an L-CODEC removal: its options, the checked data, the working copy of the
network and its validation score."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .newton import LossFn, Objective, noise_scale
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
        if isinstance(self.selection, str) and self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.epsilon is not None:
            if self.gamma is None:
                raise ValueError(
                    "epsilon is given but gamma is not: the (ε, δ) noise needs γ, the bound on "
                    "‖w' − w*(D_r)‖ from the loss's Lipschitz and strong-convexity constants"
                )
            noise_scale(self.gamma, self.epsilon, self.delta)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if self.num_perturbations < 2:
            raise ValueError(f"num_perturbations must be ≥ 2, got {self.num_perturbations}")


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
def _check_data(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError("data must be a pair (x, y) of tensors, the training data D")
    x, y = data
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError("data must be a pair (x, y) of tensors")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training samples to remove one, got {x.shape[0]}")
    if x.device != device or y.device != device:
        raise ValueError(f"data on {x.device}/{y.device}, model on {device}: move them together")
    return x, y


def _check_loss(objective: Objective, params, x, y) -> None:
    with torch.no_grad():
        losses = objective.losses(params, x[:2], y[:2])
    if losses.shape != (2,):
        raise ValueError(
            "loss_fn(output, target) must return one loss per sample (e.g. "
            f"F.cross_entropy(..., reduction='none')), got shape {tuple(losses.shape)} for 2"
        )


def validation_score(
    objective: Objective, validation: Validation | None, params: dict[str, torch.Tensor]
) -> float | None:
    """The score of the network at ``params``: accuracy on (x_val, y_val), or the callable's
    value on ``objective.model`` (which must hold ``params``); None without validation."""
    if validation is None:
        return None
    if callable(validation):
        return float(validation(objective.model))
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
    work = copy.deepcopy(model)
    training = work.training
    work.eval()
    objective = Objective(work, loss_fn, options.weight_decay, options.batch_size)
    device = next(iter(objective.params().values())).device
    x, y = _check_data(data, device)
    if validation is not None and not callable(validation):
        validation = _check_data(validation, device)
    _check_loss(objective, objective.params(), x, y)
    return work, training, objective, x, y, validation
