"""The convergence rule of forget and retrain: run until the loss is flat up to its noise, with
importance weights that have not collapsed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from ..infer.mcmc import LowESSWarning

__all__ = [
    "COLLAPSED_ESS",
    "COLLAPSED_ESS_FRACTION",
    "WeightCollapseWarning",
    "collapsed_ess_threshold",
    "has_converged",
    "run_until_flat",
    "weights_collapsed",
]

#: An ESS below this many particles is a collapse, whatever the number of particles,
COLLAPSED_ESS = 2.0
#: as is one below this fraction of them.
COLLAPSED_ESS_FRACTION = 0.01


class WeightCollapseWarning(LowESSWarning):
    """The importance weights of an unlearning loss have collapsed during
    :func:`~pyro_unlearn.forget`: one particle carries the estimate (:func:`weights_collapsed`).
    A :class:`~pyro_unlearn.infer.mcmc.LowESSWarning`, so one filter silences both."""


def collapsed_ess_threshold(num_particles: int) -> float:
    """The ESS below which the weights of ``num_particles`` draws count as collapsed:
    max(:data:`COLLAPSED_ESS`, :data:`COLLAPSED_ESS_FRACTION` · S).

    Example:
        >>> collapsed_ess_threshold(64), collapsed_ess_threshold(1000)
        (2.0, 10.0)
    """
    return max(COLLAPSED_ESS, COLLAPSED_ESS_FRACTION * num_particles)


def weights_collapsed(ess: Sequence[float], num_particles: int, window: int) -> bool:
    r"""Whether the importance weights of the last ``window`` steps have collapsed: their median
    ESS is below max(2, 0.01 S) (:func:`collapsed_ess_threshold`).

    An ESS near 1 means one of the S particles carries the whole gradient: the reverse KL's
    estimate is then as noisy as a single draw, its loss may look flat while the posterior has
    not reached the target (Nguyen et al. 2020 note the estimator's variance; the erased data
    move the posterior further than q(θ|D) reaches). With fewer than 4 particles there is no
    telling a collapse from S itself, and nothing is reported.

    Arguments:
        ess: the ESS of every step so far (``ForgetResult.ess``).
        num_particles: S, the particles per step.
        window: steps per window (the last ``window`` steps are judged, or all if fewer).

    Returns:
        ``False`` with no ESS recorded (a loss without weights, as the EUBO) or S < 4.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:
        >>> weights_collapsed([1.0] * 100, num_particles=64, window=50)
        True
        >>> weights_collapsed([1.0] * 50 + [20.0] * 50, num_particles=64, window=50)
        False
    """
    if not ess or num_particles < 4:
        return False
    return statistics.median(ess[-window:]) < collapsed_ess_threshold(num_particles)


def has_converged(losses: list[float], window: int) -> bool:
    r"""The convergence rule of :func:`~pyro_unlearn.forget` and :func:`~pyro_unlearn.retrain`:
    the loss is flat up to its noise.

    With m₁, m₂ the mean losses of the last ``window`` steps and of the ``window`` before, and
    s₁², s₂² their variances, the run has converged when

    .. math:: m_2 - m_1 \le 2 \sqrt{(s_1^2 + s_2^2) / \mathrm{window}},

    i.e. the last window is no lower than the one before by more than two standard errors.

    Arguments:
        losses: the loss of every step so far.
        window: steps per window.

    Returns:
        ``False`` while fewer than ``2 * window`` losses are known.

    Example:
        >>> has_converged([5.0 - 0.01 * i for i in range(200)], window=50)  # still falling
        False
        >>> has_converged([1.0 + 0.1 * (-1) ** i for i in range(200)], window=50)  # noise
        True
    """
    if len(losses) < 2 * window:
        return False
    last = torch.tensor(losses[-window:], dtype=torch.float64)
    before = torch.tensor(losses[-2 * window : -window], dtype=torch.float64)
    stderr = torch.sqrt((last.var() + before.var()) / window)
    return bool(before.mean() - last.mean() <= 2 * stderr)


def run_until_flat(
    step: Callable[[], float],
    num_steps: int,
    window: int,
    desc: str,
    progress: bool,
    ready: Callable[[], bool] | None = None,
) -> tuple[list[float], bool, float]:
    """Call ``step`` up to ``num_steps`` times under a tqdm bar, stopping once the loss is flat.

    The loop of :func:`~pyro_unlearn.forget` and :func:`~pyro_unlearn.retrain`: at the end of every
    ``window`` steps, stop if ``ready()`` (when given; e.g. an annealed loss is not its
    objective before its temperature reaches 1) and :func:`has_converged`.

    Arguments:
        step: one optimisation step (e.g. ``svi.step``), returning its loss.
        num_steps: the most steps to take.
        window: steps per convergence window.
        desc: the progress bar's label.
        progress: whether to show the bar.
        ready: an extra condition for stopping, checked with the rule.

    Returns:
        ``(losses, converged, seconds)``: the loss of every step, whether the rule stopped the
        run, and its wall time.

    Example:
        >>> losses = iter([3.0, 2.0] + [1.0] * 100)
        >>> trace, converged, _ = run_until_flat(lambda: next(losses), 100, 10, "", False)
        >>> converged, len(trace)
        (True, 20)
    """
    losses: list[float] = []
    converged = False
    start = time.perf_counter()
    with tqdm(total=num_steps, desc=desc, disable=not progress) as bar:
        for _ in range(num_steps):
            losses.append(step())
            bar.update()
            if len(losses) % window == 0:  # not bar.n: a disabled bar does not count
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
                if (ready is None or ready()) and has_converged(losses, window):
                    converged = True
                    break
    return losses, converged, time.perf_counter() - start
