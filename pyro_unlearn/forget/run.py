"""forget: one call that unlearns, running SVI with a progress bar until the loss is flat."""

from __future__ import annotations

import math
import statistics
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
from ..trust import diagnose as diagnose_trust
from ..trust import verdict as trust_verdict
from ..validation import check_finite_data
from .checks import check_erased_rows, check_forget_options
from .convergence import (
    WeightCollapseWarning,
    collapsed_ess_threshold,
    run_until_flat,
    weights_collapsed,
)
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
    diagnose: bool = True,
    diagnose_samples: int = 1000,
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

    The run is watched for a collapse of the loss's importance weights: when the median ESS of
    a window of steps falls below max(2, 1 % of ``num_particles``)
    (:func:`~pyro_unlearn.forget.convergence.weights_collapsed`), one
    :class:`~pyro_unlearn.forget.WeightCollapseWarning` (a
    :class:`~pyro_unlearn.LowESSWarning`) is raised, and a run whose last window collapsed is
    not ``converged``, however flat its loss.

    Then the result is checked without D_r (``diagnose=True``): :func:`pyro_unlearn.trust.diagnose`
    scores the unlearned posterior against q(θ|D)/p_adj(D_e|θ; λ) with ``diagnose_samples``
    draws, and :func:`pyro_unlearn.trust.verdict` says how far to trust it
    (``result.verdict``, ``result.summary()``). A model the diagnostics cannot take (one that
    cannot take a particle plate: ``result.particles`` is not ``"vectorized"``; a subsampling
    plate smaller than D_e...) leaves the unlearning as it is: ``verdict`` is ``None`` and
    ``summary()`` says why.

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
        diagnose: attach the trust diagnostics and verdict to the result.
        diagnose_samples: draws from each of q_u and q(θ|D) for them (at least
            :data:`pyro_unlearn.trust.MIN_SAMPLES`).
        kwargs: more keyword arguments of the model and guide.

    Returns:
        A :class:`~pyro_unlearn.forget.result.ForgetResult`: ``posterior`` the unlearned
        posterior (frozen), ``original`` q(θ|D), the losses and diagnostics of every step,
        ``collapsed``, and ``trust``, ``verdict`` and ``summary()``.

    Raises:
        TypeError: for an option of the wrong type (a string λ, a fractional ``num_steps``...).
        ValueError: for an option out of range, non-finite data (naming the argument and row),
            bad erased rows or plate, a ``posterior`` of another structure than ``guide``, or a
            run that diverged.
        IndexError: for an erased index out of range of its plate.

    Warns:
        WeightCollapseWarning: once per run, when the weights collapse.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

        Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
        Variational Inference. ICML 2018.

    Example (``tests/test_forget.py`` runs it)::

        result = forget(model, guide, x, y, erased=idx, plate="data", method="rkl")
        result.posterior, result.seconds, result.ess[-1]
        result.verdict, result.summary()  # "trusted", "trusted: q_u matches p̃ (k̂ = 0.12, ..."
        later = forget(model, guide, x, y, erased=other, plate="data", posterior=result.original)
    """
    check_forget_options(
        method,
        lam,
        num_particles,
        num_steps,
        window,
        lr,
        optim,
        loss_options,
        diagnose=diagnose,
        diagnose_samples=diagnose_samples,
    )
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
        watch = _collapse_watch(num_particles, window)
        step, diagnostics = _recording_step(svi, loss, args, kwargs, watch)
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
    collapsed = watch(diagnostics, True)
    result = ForgetResult(
        guide=guide,
        posterior=unlearned,
        original=posterior,
        losses=losses,
        diagnostics=diagnostics,
        seconds=seconds,
        converged=converged and not collapsed,  # and at β = 1: run_until_flat's ready()
        particles=loss.particles or "vectorized",
        collapsed=collapsed,
    )
    if not diagnose:
        result.explanation = "not diagnosed: forget(..., diagnose=False)"
        return result
    _attach_trust(result, model, args, kwargs, erased, plate, lam, diagnose_samples)
    return result


def _attach_trust(
    result: ForgetResult,
    model: Callable,
    args: tuple,
    kwargs: dict,
    erased: Any,
    plate: Any,
    lam: float,
    num_samples: int,
) -> None:
    """Diagnose ``result.posterior`` (:func:`pyro_unlearn.trust.diagnose`) and write the
    diagnostics, verdict and explanation into ``result``; a model the diagnostics cannot take
    leaves ``verdict`` ``None`` and the reason in the explanation."""
    if result.particles != "vectorized":
        result.explanation = (
            f"not diagnosed: the model cannot take a particle plate (the loss drew its particles "
            f"by {result.particles}), and the trust diagnostics draw θ in one pyro.plate"
        )
        return
    try:
        trust = diagnose_trust(
            model,
            result.posterior,
            result.original,
            *args,
            erased=erased,
            plate=plate,
            lam=lam,
            num_samples=num_samples,
            **kwargs,
        )
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        result.explanation = f"not diagnosed: {first_line}"
        return
    label, explanation = trust_verdict(trust)
    if result.collapsed:
        explanation += "; the weights collapsed during the run"
    result.trust, result.verdict, result.explanation = trust, label, explanation


def _collapse_watch(
    num_particles: int, window: int
) -> Callable[[dict[str, list[float]], bool], bool]:
    """``watch(record, final)``: at the end of every window (or at ``final``), whether the
    weights of the last window collapsed, warning the first time they do."""
    warned = [False]
    threshold = collapsed_ess_threshold(num_particles)

    def watch(record: dict[str, list[float]], final: bool) -> bool:
        ess = record.get("ess", [])
        if not ess or not (final or len(ess) % window == 0):
            return False
        collapsed = weights_collapsed(ess, num_particles, window)
        if collapsed and not warned[0]:
            warned[0] = True
            first, last = max(1, len(ess) - window + 1), len(ess)
            warnings.warn(
                f"forget: the importance weights collapsed: median ESS "
                f"{statistics.median(ess[-window:]):.3g} of {num_particles} particles over "
                f"steps {first}-{last}, below {threshold:g} (max(2, 1% of the particles)); one "
                "draw carries the loss's gradient, and the run is not counted as converged. "
                "The erased data may move the posterior further than q(θ|D) reaches: try "
                "loss_options={'proposal': 'current', 'anneal': 0.5}, more particles, a larger "
                "lam, or retrain",
                WeightCollapseWarning,
                stacklevel=2,
            )
        return collapsed

    return watch


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
    svi: SVI,
    loss: UnlearningLoss,
    args: tuple,
    kwargs: dict,
    watch: Callable[[dict[str, list[float]], bool], bool],
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
        watch(record, False)
        return value

    return step, record
