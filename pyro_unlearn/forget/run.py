"""forget: one call that unlearns, running SVI with a progress bar until the loss is flat."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import SVI
from pyro.infer.util import is_validation_enabled

from ..handlers import unlearn
from ..infer import UnlearningLoss
from ..params import ParamSnapshot, trainable
from ..posterior import FrozenPosterior, freeze
from ..validation import check_finite_data
from .checks import check_erased_rows, check_forget_options
from .convergence import run_until_flat
from .methods import METHODS
from .result import ForgetResult

__all__ = ["forget"]


def forget(
    model: Callable,
    guide: Callable,
    *args,
    erased: Any = None,
    plate: str | tuple[str, ...] | None = None,
    method: str = "rkl",
    lam: float = 0.0,
    posterior: FrozenPosterior | None = None,
    num_particles: int = 64,
    vectorize_particles: bool = True,
    max_plate_nesting: float = float("inf"),
    optim: pyro.optim.PyroOptim | None = None,
    lr: float = 0.01,
    num_steps: int = 2000,
    window: int = 100,
    progress: bool = True,
    loss_options: dict[str, Any] | None = None,
    **kwargs,
) -> ForgetResult:
    """Unlearn the erased data from a trained guide without retraining.

    Freezes ``guide`` as q(θ|D) (or uses ``posterior``, writing it back into ``guide`` first: the
    lazy way to serve a new request from the original posterior), then runs SVI with the loss
    ``method`` names on ``unlearn(model, erased=..., plate=...)`` for at most ``num_steps``
    steps, stopping once the loss is flat
    (:func:`~pyro_unlearn.forget.convergence.has_converged` over ``window`` steps) and, for an
    annealed loss, its ``"temperature"`` diagnostic has reached 1. Every diagnostic the loss
    reports (``loss.diagnostics()``) is recorded per step.

    Validate, then act: every argument is checked first (the options' types and ranges, the
    data's finiteness, the erased rows against their plate in one dry run of the model, and
    ``posterior`` against ``guide``: parameter and site names and shapes), before the guide is
    touched. The run itself is all or nothing: a step whose loss is not finite, or that leaves a
    guide parameter non-finite, raises a ``ValueError`` naming the cause, and the param store
    (so the live guide) is then as it was before the call. A guide whose parameters were frozen
    after training (``guide.requires_grad_(False)``) is trained all the same: its parameters
    require grad for the run (:func:`~pyro_unlearn.params.trainable`) and get their flags back
    afterwards, also when the run fails.

    Arguments:
        model: the model, as trained (not yet wrapped by :func:`~pyro_unlearn.unlearn`).
        guide: the trained guide; trained in place.
        args: the model's and guide's arguments: the erased data alone (``erased=None``) or the
            full data with ``erased`` rows of ``plate``.
        erased: the erased rows, as :func:`~pyro_unlearn.unlearn` takes them.
        plate: the plate the rows index, or a tuple of nested plates for cells (``erased`` then
            a boolean mask with one axis per plate), as :func:`~pyro_unlearn.unlearn` takes it.
        method: ``"rkl"`` (:class:`~pyro_unlearn.ReverseKL`, the robust default) or ``"eubo"``
            (:class:`~pyro_unlearn.Trace_EUBO`); the keys of
            :data:`~pyro_unlearn.forget.methods.METHODS`.
        lam: the adjusted likelihood's λ ∈ [0, 1].
        posterior: the frozen q(θ|D) to start from (default: ``freeze(guide, *args)``); it
            must have the guide's structure.
        num_particles: draws of θ per step, a positive integer.
        vectorize_particles: draw them in one vectorised plate; a model that cannot take one is
            batched by ``torch.func.vmap``, or else run one particle at a time
            (``result.particles`` says which).
        max_plate_nesting: as in Pyro's losses.
        optim: a Pyro optimiser (default: ClippedAdam, ``lr`` decaying tenfold over
            ``num_steps``).
        lr: the default optimiser's learning rate, > 0.
        num_steps: the most SVI steps, a positive integer.
        window: steps per convergence window, a positive integer.
        progress: show a progress bar.
        loss_options: more arguments of the loss
            (:func:`~pyro_unlearn.forget.methods.loss_option_names`), e.g. ``{"proposal":
            "current", "anneal": 0.8}`` for the rKL on an erasure too informative for q(θ|D).
        kwargs: more keyword arguments of the model and guide.

    Returns:
        A :class:`~pyro_unlearn.forget.result.ForgetResult`: ``posterior`` the unlearned
        posterior (frozen), ``original`` q(θ|D), the losses and diagnostics of every step.

    Raises:
        TypeError: for an option of the wrong type (a string λ, a fractional ``num_steps``...).
        ValueError: for an option out of range, non-finite data (naming the argument and row),
            bad erased rows or plate, a ``posterior`` of another structure than ``guide``, or a
            run that diverged.
        IndexError: for an erased index out of range of its plate.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example (``tests/test_forget.py`` runs it)::

        result = forget(model, guide, x, y, erased=idx, plate="data", method="rkl")
        result.posterior, result.seconds, result.ess[-1]
        later = forget(model, guide, x, y, erased=other, plate="data", posterior=result.original)
    """
    check_forget_options(method, lam, num_particles, num_steps, window, lr, optim, loss_options)
    check_finite_data(args, kwargs)
    wrapped = unlearn(model, erased=erased, plate=plate)
    check_erased_rows(wrapped, *args, **kwargs)
    restore = posterior is not None
    if posterior is None:
        posterior = freeze(guide, *args, **kwargs)
    elif not isinstance(posterior, FrozenPosterior):
        raise TypeError(
            "posterior must be a FrozenPosterior (pu.freeze(guide)), got "
            f"{type(posterior).__name__}"
        )
    else:
        posterior.check_guide(guide)
    loss = METHODS[method](
        posterior,
        lam,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=max_plate_nesting,
        **(loss_options or {}),
    )
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / num_steps)})
    # Everything is checked; now act, all or nothing: a failed run leaves the store as it was.
    # The guide's parameters are trained even if frozen (requires_grad_(False)); flags restored.
    with ParamSnapshot.transaction(), trainable(guide, *args, **kwargs):
        if restore:
            posterior.restore(guide)
        svi = SVI(wrapped, guide, optim, loss)
        step, diagnostics = _recording_step(svi, loss, args, kwargs)
        losses, converged, seconds = run_until_flat(
            step,
            num_steps,
            window,
            f"unlearning ({method}, λ={float(lam):g})",
            progress,
            lambda: diagnostics.get("temperature", [1.0])[-1] >= 1.0,
        )
        _check_trained_finite(optim, len(losses))
        unlearned = freeze(guide, *args, **kwargs)
    return ForgetResult(
        guide=guide,
        posterior=unlearned,
        original=posterior,
        losses=losses,
        diagnostics=diagnostics,
        seconds=seconds,
        converged=converged,
        particles=loss.particles or "vectorized",
    )


def _check_trained_finite(optim: pyro.optim.PyroOptim, steps: int) -> None:
    """Raise naming the first parameter the optimiser trains that holds NaN or ±inf."""
    store = pyro.get_param_store()
    for param in getattr(optim, "optim_objs", {}):
        if not bool(torch.isfinite(param).all()):
            raise ValueError(
                f"the guide's parameter {store.param_name(param)!r} became non-finite by step "
                f"{steps}: the optimisation diverged; try a smaller lr (the guide is left as it "
                "was)"
            )


def _recording_step(
    svi: SVI, loss: UnlearningLoss, args: tuple, kwargs: dict
) -> tuple[Callable[[], float], dict[str, list[float]]]:
    """One SVI step that appends the loss's diagnostics to a record, and that record. A
    non-finite loss raises a ``ValueError`` naming its cause (diverged parameters, or a target
    that is not normalisable) instead of Pyro's warning."""
    record: dict[str, list[float]] = {}
    count = [0]

    def step() -> float:
        count[0] += 1
        try:
            with warnings.catch_warnings():  # Pyro's NaN/inf warning: the error below says more
                warnings.filterwarnings("ignore", message="Encountered", category=UserWarning)
                value = svi.step(*args, **kwargs)
        except (ValueError, RuntimeError) as error:  # e.g. a distribution's own validation
            _check_trained_finite(svi.optim, count[0] - 1)
            if count[0] == 1:  # nothing was trained yet: the model's or guide's own error
                raise
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise ValueError(
                f"step {count[0]} failed after the optimiser had moved the guide "
                f"({type(error).__name__}: {first_line}): the optimisation diverged; try a "
                "smaller lr (the guide is left as it was)"
            ) from error
        if is_validation_enabled():  # costs a sync per step; once at the end otherwise
            _check_trained_finite(svi.optim, count[0])
        if not math.isfinite(value):
            raise ValueError(
                f"the unlearning loss is {value} at step {count[0]}: the target "
                "q(θ|D)/p_adj(D_e|θ) may not be normalisable here (erased data too informative "
                "for q(θ|D)); try a larger lam, ReverseKL, more particles or a smaller lr (the "
                "guide is left as it was)"
            )
        for name, diagnostic in loss.diagnostics().items():
            record.setdefault(name, []).append(diagnostic)
        return value

    return step, record
