"""What the GPyTorch objectives guard while a user's loop steps them: the GP's train mode, the
hyperparameters held fixed, a finite value."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import gpytorch
import torch

__all__ = ["FixedParameters", "train_mode"]


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
