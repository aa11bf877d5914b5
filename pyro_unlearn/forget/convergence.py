"""The convergence rule of forget and retrain: run until the loss is flat up to its noise."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from tqdm import tqdm

__all__ = ["has_converged", "run_until_flat"]


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
