"""The checks forget makes before it acts: its options, and the erased rows by a dry run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from ..handlers import is_erased
from ..infer.adjusted_likelihood import check_lam
from ..params import ParamSnapshot
from ..traces import preserved_rng
from ..trust import MIN_SAMPLES
from ..validation import check_plate_shapes, check_positive, check_positive_int
from .auto import AUTO
from .methods import METHODS, SET_BY_FORGET, loss_option_names

__all__ = ["check_erased_rows", "check_forget_options"]


def check_forget_options(
    method: str,
    lam: float,
    num_particles: int,
    num_steps: int,
    window: int,
    lr: float | None,
    optim: pyro.optim.PyroOptim | None,
    loss_options: Mapping[str, Any] | None,
    *,
    diagnose: bool = True,
    diagnose_samples: int = MIN_SAMPLES,
) -> None:
    """The argument checks of :func:`~pyro_unlearn.forget` that need neither the model nor the
    guide.

    Arguments:
        method, lam, num_particles, num_steps, window, lr, optim, loss_options, diagnose,
            diagnose_samples: as :func:`~pyro_unlearn.forget` takes them.

    Raises:
        TypeError: for an option of the wrong type.
        ValueError: for an option out of range, an unknown ``method`` or loss option, or a loss
            option that ``forget`` sets itself.

    Example:
        >>> check_forget_options("rkl", 0.0, 64, 2000, 100, 0.01, None, {"num_particles": 8})
        Traceback (most recent call last):
        ...
        ValueError: loss_options sets ['num_particles']: pass them to forget itself
    """
    if not isinstance(method, str) or method not in {*METHODS, AUTO}:
        raise ValueError(f"method must be one of {sorted({*METHODS, AUTO})}, got {method!r}")
    check_lam(lam)
    check_positive_int("num_particles", num_particles)
    check_positive_int("num_steps", num_steps)
    check_positive_int("window", window)
    if lr is not None:
        check_positive("lr", lr)
    if not isinstance(diagnose, bool):
        raise TypeError(f"diagnose must be True or False, got {type(diagnose).__name__}")
    if check_positive_int("diagnose_samples", diagnose_samples) < MIN_SAMPLES:
        raise ValueError(f"diagnose_samples must be at least {MIN_SAMPLES}, got {diagnose_samples}")
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(
            f"optim must be a Pyro optimiser (e.g. pyro.optim.Adam({{'lr': 1e-3}})) or None, "
            f"got {type(optim).__name__}"
        )
    if loss_options is None:
        return
    if not isinstance(loss_options, Mapping):
        raise TypeError(f"loss_options must be a dict, got {type(loss_options).__name__}")
    taken = sorted(set(loss_options) & SET_BY_FORGET)
    if taken:
        raise ValueError(f"loss_options sets {taken}: pass them to forget itself")
    if method == AUTO and loss_options:
        raise ValueError(
            f"loss_options {sorted(loss_options, key=str)} set one loss's options, and "
            "method='auto' chooses the loss itself: name the loss (method='rkl' or 'eubo')"
        )
    if method == AUTO:
        return
    known = loss_option_names(METHODS[method])
    unknown = sorted(set(loss_options) - known, key=str)
    if unknown:
        raise ValueError(
            f"loss_options has unknown option(s) {unknown} for method={method!r}; "
            f"it takes {sorted(known)}"
        )


def check_erased_rows(wrapped: Callable, *args, **kwargs) -> None:
    """Run a model wrapped by :func:`~pyro_unlearn.unlearn` once, against a private view of the
    param store and without gradients, so that what only the model can tell is checked before
    anything is written: the erased rows are in range of their plate, the plate and the named
    sites exist, every site in a plate has the plate's shape (no observation broadcast across
    the rows: :func:`~pyro_unlearn.validation.check_plate_shapes`), and some observation is
    flagged.

    Arguments:
        wrapped: ``unlearn(model, erased=..., plate=...)``.
        *args, **kwargs: the model's arguments.

    Raises:
        IndexError: for an erased index out of range of its plate.
        ValueError: for an unknown plate or site, a mask of the wrong length, a site broadcast
            across a dim no plate declares, or a model in which nothing is erased.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro_unlearn import unlearn
        >>> def model(y):
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        >>> check_erased_rows(unlearn(model, erased=[5], plate="data"), torch.zeros(3))
        Traceback (most recent call last):
        ...
        IndexError: erased index 5 is out of range for plate 'data' of size 3
    """
    with preserved_rng(args, kwargs), ParamSnapshot.of_store(clone=False).active():
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(wrapped).get_trace(*args, **kwargs)
    check_plate_shapes(trace)
    flagged = [n for n, site in trace.nodes.items() if is_erased(n, site)]
    if not flagged:
        raise ValueError(
            "the model has no erased observations: the erased data must be observed sites "
            "(pyro.sample(..., obs=...)) of the model, inside the named plate"
        )
