"""What the GPyTorch objectives guard while a user's loop steps them: the GP's train mode, the
hyperparameters held fixed, a finite value."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gpytorch
import torch

__all__ = ["FixedParameters", "check_ngd", "train_mode"]


@contextlib.contextmanager
def train_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put ``modules`` in ``train()`` mode for the block and give each its mode back after.

    After ``gp.eval()`` and a prediction, GPyTorch's variational strategy serves q(f) from the
    caches of that prediction: q(u)'s covariance then gets a gradient of ~1e-8, or none, and the
    objectives' answers are wrong without an error. Switching mode clears the caches, so the
    next prediction is made from the unlearned q(u)."""
    modes = [module.training for module in modules]
    try:
        for module, training in zip(modules, modes, strict=True):
            if not training:
                module.train()
        yield
    finally:
        for module, training in zip(modules, modes, strict=True):
            if not training:
                module.eval()


class FixedParameters:
    """A snapshot of every parameter of a GP and its likelihood except q(u)'s, checked on every
    step: the unlearning objectives hold kernel, mean and likelihood hyperparameters and the
    inducing inputs fixed (their gradient would move them to make D_e unlikely).

    Arguments:
        model: the GP.
        likelihood: its likelihood.
    """

    def __init__(self, model: gpytorch.models.ApproximateGP, likelihood: torch.nn.Module) -> None:
        variational = {id(p) for p in model.variational_parameters()}
        named = [
            *model.named_parameters(),
            *(("likelihood." + n, p) for n, p in likelihood.named_parameters()),
        ]
        self.params = [(name, p) for name, p in named if id(p) not in variational]
        self.values = [p.detach().clone() for _, p in self.params]

    def check(self) -> None:
        """Raise if any fixed parameter moved since the snapshot, after putting it back.

        Raises:
            RuntimeError: naming the parameters an optimiser moved."""
        if not self.params:
            return
        with torch.no_grad():
            moved = torch.stack(
                [(p != v).any() for (_, p), v in zip(self.params, self.values, strict=True)]
            )
            if not bool(moved.any()):  # one synchronisation per step
                return
            names = [name for (name, _), m in zip(self.params, moved.tolist(), strict=True) if m]
            for (_, p), v in zip(self.params, self.values, strict=True):
                p.copy_(v)
        raise RuntimeError(
            f"the optimiser moved {', '.join(names)}, which unlearning holds fixed (only q(u) "
            "moves; the others would move to make D_e unlikely). They are put back as they were; "
            "build the optimiser on model.variational_parameters() only, not on "
            "model.parameters() as GPyTorch's training loops do"
        )


def check_ngd(
    optimizer: torch.optim.Optimizer,
    erased: int | torch.Tensor,
    model: gpytorch.models.ApproximateGP | None = None,
) -> None:
    r"""Check an optimiser built for unlearning before its first step: a
    :class:`gpytorch.optim.NGD`'s ``num_data`` must be ``|D_e|``, and (given ``model``) it may
    hold q(u)'s parameters only.

    NGD steps η ← η − lr · ``num_data`` · ∇η, where the objectives' value is per erased point
    (divided by ``|D_e|``): with ``num_data=|D_e|`` one λ = 0 EUBO step at lr = 1 is exactly
    η_D − η_e. GPyTorch's tutorials write ``num_data=train_y.size(0)``, which scales every step by
    N/``|D_e|`` without an error (the objectives cannot see the optimiser, so they cannot check
    it on a step).

    Arguments:
        optimizer: the optimiser (any ``torch.optim.Optimizer``; ``num_data`` is checked for NGD).
        erased: ``|D_e|``, or the erased inputs x_e, ``(N,)`` or ``(*batch, N, D)`` (N taken).
        model: the GP; its non-variational parameters (hyperparameters, mean, inducing inputs)
            must not be in the optimiser.

    Raises:
        TypeError: ``optimizer`` not a ``torch.optim.Optimizer``, ``erased`` neither an int nor
            a tensor.
        ValueError: NGD's ``num_data`` is not ``|D_e|``, or the optimiser holds a fixed
            parameter of ``model`` (named).

    Example:
        >>> import gpytorch, torch
        >>> q = torch.nn.Parameter(torch.zeros(3))
        >>> check_ngd(gpytorch.optim.NGD([q], num_data=12, lr=1.0), 12)
        >>> check_ngd(gpytorch.optim.NGD([q], num_data=60, lr=1.0), torch.zeros(12))
        Traceback (most recent call last):
        ...
        ValueError: NGD's num_data is 60, but 12 points are erased: ...
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if isinstance(erased, torch.Tensor):
        if erased.dim() == 0:
            raise ValueError("erased must be |D_e| or the erased inputs, got a 0-dim tensor")
        num_erased = erased.shape[0] if erased.dim() == 1 else erased.shape[-2]
    elif isinstance(erased, int) and not isinstance(erased, bool) and erased > 0:
        num_erased = erased
    else:
        raise TypeError(
            f"erased must be |D_e| (a positive int) or the erased inputs, got {erased!r}"
        )
    if isinstance(optimizer, gpytorch.optim.NGD) and optimizer.num_data != num_erased:
        raise ValueError(
            f"NGD's num_data is {optimizer.num_data}, but {num_erased} points are erased: the "
            "unlearning objectives are per erased point, so build it with num_data=len(y_e) (the "
            "tutorials' num_data=train_y.size(0) scales every step by N/|D_e|)"
        )
    if model is not None:
        fixed = {id(p): n for n, p in FixedParameters(model, torch.nn.Module()).params}
        held = [fixed[id(p)] for g in optimizer.param_groups for p in g["params"] if id(p) in fixed]
        if held:
            raise ValueError(
                f"the optimiser holds {', '.join(held)}, which unlearning holds fixed: build it on "
                "model.variational_parameters() only"
            )
