"""forget: one call that unlearns, running SVI with a progress bar until the loss is flat."""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pyro
from pyro.infer import SVI

from ..handlers import unlearn
from ..infer import LowESSWarning, lam_for_mass, warn_small_kept_mass
from ..infer.threshold import check_mass
from ..params import ParamSnapshot, trainable
from ..posterior import FrozenPosterior, freeze
from ..validation import check_finite_data
from ._runs import Run, attach_forget_trust, run_natural
from .auto import AUTO, AUTO_LADDER, attempt_row, nothing_kept, rank, should_escalate
from .checks import check_erased_rows, check_forget_options
from .convergence import run_until_flat
from .methods import METHODS
from .result import ForgetResult
from .steps import check_trained_finite, collapse_watch, recording_step, warn_collapsed

__all__ = ["DEFAULT_LR", "forget"]

#: The default optimiser's learning rate, for a guide that suggests none (``unlearning_lr``).
DEFAULT_LR = 0.01


def forget(
    model: Callable,
    guide: Callable,
    *args,
    erased: Any = None,
    plate: str | tuple[str, ...] | None = None,
    method: str = "auto",
    lam: float = 0.0,
    mass: float | None = None,
    posterior: FrozenPosterior | None = None,
    num_particles: int = 64,
    vectorize_particles: bool = True,
    max_plate_nesting: float = float("inf"),
    optim: pyro.optim.PyroOptim | None = None,
    lr: float | None = None,
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

    ``method="auto"`` (the default) chooses the loss by the verdict: it runs the paper's reverse
    KL first; when that run is not ``"trusted"`` (or, undiagnosed, its weights collapsed), it
    runs, each from q(θ|D) again, the reverse KL annealed from the current guide
    (``proposal="current"``, ``anneal=0.5``), then the EUBO, then the annealed reverse KL with λ
    raised to keep 90 % of q(θ|D)'s mass (when that is above the caller's λ), stopping at the
    first trusted run (:data:`~pyro_unlearn.forget.auto.AUTO_LADDER`). It keeps the
    best-diagnosed run (:func:`~pyro_unlearn.forget.auto.rank`: verdict, no collapse, the
    caller's λ, converged, then the share of the distance to p̃ left), writes it into the
    guide, and records every run in ``result.attempts``; ``result.method`` and
    ``result.loss_options`` name the one kept and ``result.seconds`` counts them all. The
    collapse warning is raised only when the run kept collapsed. An explicit ``method`` runs
    that loss once, with ``loss_options``.

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
        method: ``"auto"`` (the default: the runs of
            :data:`~pyro_unlearn.forget.auto.AUTO_LADDER` in turn, see above), ``"rkl"``
            (:class:`~pyro_unlearn.ReverseKL`, the paper's robust choice) or ``"eubo"``
            (:class:`~pyro_unlearn.Trace_EUBO`): the keys of
            :data:`~pyro_unlearn.forget.methods.METHODS` run that loss once.
        lam: the adjusted likelihood's λ ∈ [0, 1] (the papers' scale: unlearn where
            q(θ|D) > λ·max q). A λ ∈ (0, 1) that keeps less than 5 % of q(θ|D)'s mass warns
            (:class:`~pyro_unlearn.infer.SmallKeptMassWarning`): in a few dozen dimensions
            almost no draw of q(θ|D) is above the threshold, and nothing is unlearned.
        mass: instead of ``lam``, the share m ∈ (0, 1] of q(θ|D)'s mass the threshold keeps
            (λ = :func:`~pyro_unlearn.infer.lam_for_mass` (q(θ|D), m); m = 1 is λ = 0), which
            means the same in every dimension; ``result.lam`` is the λ it gave.
        posterior: the frozen q(θ|D) to start from (default: ``freeze(guide, *args)``); it
            must have the guide's structure.
        num_particles: draws of θ per step, a positive integer.
        vectorize_particles: draw them in one vectorised plate; a model that cannot take one is
            batched by ``torch.func.vmap``, or else run one particle at a time
            (``result.particles`` says which).
        max_plate_nesting: as in Pyro's losses.
        optim: a Pyro optimiser (default: ClippedAdam, ``lr`` decaying tenfold over
            ``num_steps``).
        lr: the default optimiser's learning rate, > 0 (default: the guide's own
            ``unlearning_lr(posterior)`` where it has one, as the GPyTorch
            :class:`~pyro_unlearn.contrib.gpytorch.PyroSVGP`'s guide does; else 0.01).
        num_steps: the most SVI steps, a positive integer.
        window: steps per convergence window, a positive integer.
        progress: show a progress bar.
        loss_options: more arguments of an explicitly named loss (not with ``"auto"``)
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
    if mass is not None:
        check_mass(mass)
        if lam != 0.0:
            raise ValueError(f"pass lam or mass, not both; got lam={lam!r} and mass={mass!r}")
    if "gpytorch" in sys.modules:  # GPyTorch's own PyroGP would run and unlearn nothing
        from ..contrib.gpytorch import check_not_pyro_gp

        check_not_pyro_gp(model, guide)
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
    if lr is None:
        suggest = getattr(guide, "unlearning_lr", None) if optim is None else None
        lr = float(suggest(posterior)) if callable(suggest) else DEFAULT_LR
    if mass is not None:
        lam = lam_for_mass(posterior, mass, *args, **kwargs)
    elif 0.0 < lam < 1.0:
        warn_small_kept_mass(posterior, lam, *args, stacklevel=3, **kwargs)
    run = Run(
        model=model,
        guide=guide,
        wrapped=wrapped,
        args=args,
        kwargs=kwargs,
        erased=erased,
        plate=plate,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=max_plate_nesting,
        optim=optim,
        lr=lr,
        num_steps=num_steps,
        window=window,
        progress=progress,
        diagnose=diagnose,
        diagnose_samples=diagnose_samples,
    )
    if method == AUTO:
        return _run_auto(run, posterior, lam)
    return _run_once(run, posterior, restore, method, lam, loss_options or {})


def _run_once(
    run: Run,
    posterior: FrozenPosterior,
    restore: bool,
    method: str,
    lam: float,
    loss_options: dict[str, Any],
    label: str = "",
) -> ForgetResult:
    """One SVI run of the loss ``method`` from ``posterior``, all or nothing, then diagnosed."""
    loss = METHODS[method](
        posterior,
        lam,
        num_particles=run.num_particles,
        vectorize_particles=run.vectorize_particles,
        max_plate_nesting=run.max_plate_nesting,
        **loss_options,
    )
    optim = copy.deepcopy(run.optim)  # a fresh optimiser state per run (auto runs several)
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": run.lr, "lrd": 0.1 ** (1 / run.num_steps)})
    guide, args, kwargs = run.guide, run.args, run.kwargs
    # Everything is checked; now act, all or nothing: a failed run leaves the store as it was.
    # The guide's parameters are trained even if frozen (requires_grad_(False)); flags restored.
    with ParamSnapshot.transaction(), trainable(guide, *args, **kwargs):
        if restore:
            posterior.restore(guide)
        svi = SVI(run.wrapped, guide, optim, loss)
        watch = collapse_watch(run.num_particles, run.window)
        step, diagnostics = recording_step(svi, loss, args, kwargs, watch)
        losses, converged, seconds = run_until_flat(
            step,
            run.num_steps,
            run.window,
            f"unlearning ({label or method}, λ={float(lam):g})",
            run.progress,
            lambda: diagnostics.get("temperature", [1.0])[-1] >= 1.0,
        )
        check_trained_finite(optim, len(losses))
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
        method=method,
        loss_options=dict(loss_options),
        lam=float(lam),
        particles=loss.particles or "vectorized",
        collapsed=collapsed,
    )
    if not run.diagnose:
        result.explanation = "not diagnosed: forget(..., diagnose=False)"
        return result
    attach_forget_trust(result, run, lam)
    return result


def _run_auto(run: Run, original: FrozenPosterior, lam: float) -> ForgetResult:
    """``method="auto"``: the runs of :data:`~pyro_unlearn.forget.auto.AUTO_LADDER` from
    q(θ|D), in order (each at the caller's λ or its own kept mass), until one is trusted; the
    best-diagnosed one is written back into the guide and returned, with every run in its
    ``attempts``."""
    results: list[ForgetResult] = []
    attempts: list[dict[str, Any]] = []
    for number, rung in enumerate(AUTO_LADDER, 1):
        label = f"auto {number}/{len(AUTO_LADDER)}: {rung.label}"
        rung_lam = lam
        if rung.method == "eubo" and results and results[-1].verdict is None:
            continue  # undiagnosed, a mode-seeking EUBO could not be told from a catastrophe
        try:
            if rung.mass is not None:
                rung_lam = lam_for_mass(original, rung.mass, *run.args, **run.kwargs)
                if rung_lam <= lam:  # the caller's λ already curbs more
                    continue
            with warnings.catch_warnings():  # reported once below, for the run kept
                warnings.simplefilter("ignore", LowESSWarning)  # WeightCollapseWarning's base
                result = run_natural(run, original, rung, rung_lam)
                if result is None:
                    result = _run_once(
                        run, original, True, rung.method, rung_lam, rung.options, label
                    )
        except ValueError as error:  # a later rung diverged: record it, keep the others
            if not results:
                raise
            attempts.append(attempt_row(rung, rung_lam, None, error))
            continue
        results.append(result)
        attempts.append(attempt_row(rung, rung_lam, result))
        if not should_escalate(result):
            break
    chosen = results[min(range(len(results)), key=lambda i: rank(results[i], lam))]
    if chosen.verdict == "retrain" and rank(chosen, lam)[1]:  # no diagnosed run moved to p̃
        chosen = nothing_kept(chosen, original, len(results), lam)
    if chosen.posterior is not results[-1].posterior:
        with ParamSnapshot.transaction():
            chosen.posterior.restore(run.guide)
    for row in attempts:
        row["chosen"] = row.get("run") is chosen
        row.pop("run", None)
    chosen.attempts = attempts
    chosen.seconds = sum(r.seconds for r in results)
    if chosen.collapsed:
        warn_collapsed(chosen.ess, run.num_particles, run.window)
    return chosen
