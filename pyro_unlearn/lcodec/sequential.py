"""Many L-CODEC removals in a row, each from the model and data the previous ones left
(:func:`remove_sequentially`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..validation import check_positive_int
from .newton import LossFn
from .options import RemovalOptions, Validation, working_copy
from .removal import RemovalResult, check_removal_request, remove_in_place

__all__ = ["SequentialRemovalResult", "remove_sequentially"]


@dataclass
class SequentialRemovalResult:
    """What :func:`remove_sequentially` returns.

    Attributes:
        model: the copy of the network with every accepted removal applied.
        steps: one :class:`RemovalResult` per request, in order (their ``model`` is None).
        removed: the requested indices (rows of the original data) that were removed.
        skipped: those whose removal was discarded (``retrain_advised``).
        seconds: total wall time.
        converged: (a property) every removal converged (see :attr:`RemovalResult.converged`).
    """

    model: nn.Module
    steps: list[RemovalResult] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def retrain_advised(self) -> bool:
        """Whether any removal was skipped: the model still carries those samples."""
        return bool(self.skipped)

    @property
    def converged(self) -> bool:
        """Every removal was kept and was a Newton step on a positive definite H'_P."""
        return all(step.converged for step in self.steps)


def _requests(erase_indices, n: int, num_random) -> tuple[list[int], list]:
    """The requested rows, checked, and one ``num_random`` per request."""
    indices = torch.as_tensor(erase_indices)
    if indices.numel() and (indices.is_floating_point() or indices.dtype == torch.bool):
        raise TypeError(
            f"erase_indices must be row indices (integers), got {indices.dtype}"
            + (
                ": for a boolean mask give mask.nonzero().squeeze(-1)"
                if indices.dtype == torch.bool
                else ""
            )
        )
    if indices.dim() > 1:
        raise ValueError(
            f"erase_indices must be a list of rows (1-D), got shape {tuple(indices.shape)}"
        )
    order = indices.reshape(-1).tolist()
    if len(set(order)) != len(order):
        raise ValueError("erase_indices has repeated entries")
    bad = [i for i in order if not 0 <= i < n]
    if bad:
        raise IndexError(f"erase indices {bad} are out of range for {n} training samples")
    if len(order) >= n:
        raise ValueError(f"cannot remove {len(order)} of {n} samples: at least one must remain")
    sizes = (
        [num_random] * len(order)
        if num_random is None or isinstance(num_random, int)
        else list(num_random)
    )
    if len(sizes) != len(order):
        raise ValueError(f"num_random has {len(sizes)} entries for {len(order)} requests")
    sizes = [None if k is None else check_positive_int("num_random", k) for k in sizes]
    return order, sizes


def remove_sequentially(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, torch.Tensor],
    erase_indices: Sequence[int] | torch.Tensor,
    *,
    progress: bool = True,
    validation: Validation | None = None,
    max_validation_drop: float | None = None,
    num_random: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> SequentialRemovalResult:
    """Remove the rows ``erase_indices`` of D one at a time by :func:`~pyro_unlearn.lcodec.remove`,
    each from the model and the data the previous removals left (n shrinks by one each time).

    A removal whose validation score drops by more than ``max_validation_drop`` is skipped: the
    model stays as it was, the sample stays in D for the later Hessians (the model still carries
    it), and it is listed in ``skipped`` (``retrain_advised``). The input model is not modified.

    Arguments:
        model, loss_fn, data: as for :func:`~pyro_unlearn.lcodec.remove`.
        erase_indices: the rows of D to remove, in order, without repeats.
        progress: a progress bar over the requests.
        validation, max_validation_drop: as for :func:`~pyro_unlearn.lcodec.remove`.
        num_random: as for :func:`~pyro_unlearn.lcodec.remove`, or a list of one size per
            request (e.g. the sizes a FOCI run picked, for a paired random baseline).
        **kwargs: the other keyword arguments of :func:`~pyro_unlearn.lcodec.remove`. The
            perturbation scale defaults to 0.1 × the mean feature standard deviation of the
            full D, fixed for every request.

    Returns:
        a :class:`SequentialRemovalResult`.

    References:
        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022.

    Example:
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(100, 3), torch.randint(0, 2, (100,))
        >>> net = nn.Linear(3, 2)
        >>> loss = lambda out, t: F.cross_entropy(out, t, reduction="none")
        >>> out = remove_sequentially(net, loss, (x, y), [3, 9], selection="all", progress=False)
        >>> out.removed, out.skipped, len(out.steps)
        ([3, 9], [], 2)
    """
    start = time.perf_counter()
    options = RemovalOptions(**kwargs)
    check_removal_request(None, validation, max_validation_drop)
    work, training, objective, x, y, validation = working_copy(
        model, loss_fn, data, options, validation
    )
    n = x.shape[0]
    order, sizes = _requests(erase_indices, n, num_random)
    if options.perturbation_scale is None:  # fixed by the full data, not the shrinking one
        options = replace(options, perturbation_scale=0.1 * float(x.float().std(0).mean()))
    keep = torch.ones(n, dtype=torch.bool, device=x.device)
    out = SequentialRemovalResult(model=work)
    score = None
    bar = tqdm(order, desc="L-CODEC removals", disable=not progress)
    for i, size in zip(bar, sizes, strict=True):
        step = remove_in_place(
            objective,
            x[keep],
            y[keep],
            int(keep[:i].sum()),  # the row of i in the data left
            options,
            num_random=size,
            validation=validation,
            max_validation_drop=max_validation_drop,
            validation_before=score,
        )
        step.index = i
        out.steps.append(step)
        if step.applied:
            keep[i] = False
            out.removed.append(i)
            score = None if step.validation is None else step.validation[1]
        else:
            out.skipped.append(i)
            score = step.validation[0]
        if progress and step.validation is not None:
            bar.set_postfix(validation=f"{step.validation[1]:.4f}", skipped=len(out.skipped))
    work.train(training)
    out.seconds = time.perf_counter() - start
    return out
