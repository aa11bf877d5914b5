"""The steps of one forget run: an SVI step that records the loss's diagnostics and refuses a
diverged run, the watch on the importance weights, and the final check of the trained guide."""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable

import pyro
import torch
from pyro.infer import SVI
from pyro.infer.util import is_validation_enabled

from ..infer import UnlearningLoss
from .convergence import WeightCollapseWarning, collapsed_ess_threshold, weights_collapsed

__all__ = ["check_trained_finite", "collapse_watch", "recording_step", "warn_collapsed"]


def collapse_watch(
    num_particles: int, window: int
) -> Callable[[dict[str, list[float]], bool], bool]:
    """``watch(record, final)``: at the end of every window (or at ``final``), whether the
    weights of the last window collapsed, warning the first time they do.

    Arguments:
        num_particles: the loss's particles per step.
        window: steps per convergence window.

    Returns:
        ``watch``, which reads ``record["ess"]`` (one value per step) and raises one
        :class:`~pyro_unlearn.forget.WeightCollapseWarning` per run.

    Example:
        >>> watch = collapse_watch(num_particles=64, window=2)
        >>> watch({"ess": [40.0, 30.0]}, False)
        False
    """
    warned = [False]

    def watch(record: dict[str, list[float]], final: bool) -> bool:
        ess = record.get("ess", [])
        if not ess or not (final or len(ess) % window == 0):
            return False
        collapsed = weights_collapsed(ess, num_particles, window)
        if collapsed and not warned[0]:
            warned[0] = True
            warn_collapsed(ess, num_particles, window)
        return collapsed

    return watch


def warn_collapsed(ess: list[float], num_particles: int, window: int) -> None:
    """Raise the :class:`~pyro_unlearn.forget.WeightCollapseWarning` of a run whose importance
    weights collapsed over its last ``window`` steps, quoting their median ESS.

    Arguments:
        ess: the ESS of every step.
        num_particles: the loss's particles per step.
        window: steps per convergence window.

    Example::

        warn_collapsed(result.ess, num_particles=64, window=100)
    """
    first, last = max(1, len(ess) - window + 1), len(ess)
    warnings.warn(
        f"forget: the importance weights collapsed: median ESS "
        f"{statistics.median(ess[-window:]):.3g} of {num_particles} particles over "
        f"steps {first}-{last}, below {collapsed_ess_threshold(num_particles):g} (max(2, 1% of "
        "the particles)); one draw carries the loss's gradient, and the run is not counted as "
        "converged. The erased data may move the posterior further than q(θ|D) reaches: try "
        "method='auto', loss_options={'proposal': 'current', 'anneal': 0.5}, more particles, a "
        "larger lam, or retrain",
        WeightCollapseWarning,
        stacklevel=4,
    )


def check_trained_finite(optim: pyro.optim.PyroOptim, steps: int) -> None:
    """Raise naming the first parameter the optimiser trains that holds NaN or ±inf.

    Arguments:
        optim: the run's Pyro optimiser (its ``optim_objs`` name the trained parameters).
        steps: the steps taken, for the message.

    Raises:
        ValueError: naming the parameter, when one is not finite.

    Example:
        >>> check_trained_finite(pyro.optim.Adam({"lr": 0.1}), 0)  # nothing trained yet
    """
    store = pyro.get_param_store()
    for param in getattr(optim, "optim_objs", {}):
        if not bool(torch.isfinite(param).all()):
            raise ValueError(
                f"the guide's parameter {store.param_name(param)!r} became non-finite by step "
                f"{steps}: the optimisation diverged; try a smaller lr (the guide is left as it "
                "was)"
            )


def recording_step(
    svi: SVI,
    loss: UnlearningLoss,
    args: tuple,
    kwargs: dict,
    watch: Callable[[dict[str, list[float]], bool], bool],
) -> tuple[Callable[[], float], dict[str, list[float]]]:
    """One SVI step that appends the loss's diagnostics to a record, and that record. A
    non-finite loss raises a ``ValueError`` naming its cause (diverged parameters, or a target
    that is not normalisable) instead of Pyro's warning.

    Arguments:
        svi: the run's ``SVI`` on the wrapped model, the guide and the unlearning loss.
        loss: that loss (its ``diagnostics()`` are recorded after every step).
        args, kwargs: the model's arguments.
        watch: from :func:`collapse_watch`.

    Returns:
        ``(step, record)``: ``step()`` takes one step and returns its loss; ``record`` holds the
        diagnostics by name, one value per step.

    Example::

        step, record = recording_step(svi, loss, (x, y), {}, collapse_watch(64, 100))
        step(); record["ess"]
    """
    record: dict[str, list[float]] = {}
    count = [0]

    def step() -> float:
        count[0] += 1
        try:
            with warnings.catch_warnings():  # Pyro's NaN/inf warning: the error below says more
                warnings.filterwarnings("ignore", message="Encountered", category=UserWarning)
                value = svi.step(*args, **kwargs)
        except (ValueError, RuntimeError) as error:  # e.g. a distribution's own validation
            check_trained_finite(svi.optim, count[0] - 1)
            if count[0] == 1:  # nothing was trained yet: the model's or guide's own error
                raise
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise ValueError(
                f"step {count[0]} failed after the optimiser had moved the guide "
                f"({type(error).__name__}: {first_line}): the optimisation diverged; try a "
                "smaller lr (the guide is left as it was)"
            ) from error
        if is_validation_enabled():  # costs a sync per step; once at the end otherwise
            check_trained_finite(svi.optim, count[0])
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
