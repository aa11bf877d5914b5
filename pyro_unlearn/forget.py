"""One call that unlearns: runs the SVI loop with a progress bar until the loss has converged."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro.infer import SVI
from tqdm import tqdm

from .handlers import unlearn
from .infer import ReverseKL, Trace_EUBO
from .posterior import FrozenPosterior, freeze

__all__ = ["ForgetResult", "forget", "has_converged", "run_until_flat"]

_METHODS = {"eubo": Trace_EUBO, "rkl": ReverseKL}


@dataclass
class ForgetResult:
    """What :func:`forget` returns.

    Attributes:
        guide: the unlearned guide (the live guide, trained in place).
        posterior: the frozen original q(θ|D), untouched; reuse it for later requests.
        losses: the loss of every step.
        ess: the effective sample size of every step (``method="rkl"``; empty for the EUBO).
        seconds: wall time of the optimisation.
        converged: whether the convergence rule stopped the run before ``num_steps``.
    """

    guide: Callable
    posterior: FrozenPosterior
    losses: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = False

    @property
    def num_steps(self) -> int:
        return len(self.losses)


def has_converged(losses: list[float], window: int) -> bool:
    """True when the mean loss of the last ``window`` steps is no lower than that of the window
    before, by more than two standard errors: the loss trace is flat up to its noise."""
    if len(losses) < 2 * window:
        return False
    last = torch.tensor(losses[-window:], dtype=torch.float64)
    before = torch.tensor(losses[-2 * window : -window], dtype=torch.float64)
    stderr = torch.sqrt((last.var() + before.var()) / window)
    return bool(before.mean() - last.mean() <= 2 * stderr)


def forget(
    model: Callable,
    guide: Callable,
    *args,
    erased: Any = None,
    plate: str | None = None,
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
    loss_options: dict | None = None,
    **kwargs,
) -> ForgetResult:
    """Unlearn the erased data from a trained guide without retraining.

    Freezes ``guide`` as q(θ|D) (or uses ``posterior``, writing it back into ``guide`` first: the
    lazy way to serve a new request from the original posterior), then runs SVI with
    ``method`` ("rkl", the robust default, or "eubo") on ``unlearn(model, erased=..., plate=...)``
    for at most ``num_steps`` steps, stopping once the loss is flat (:func:`has_converged` over
    ``window`` steps). The default optimiser is ClippedAdam with ``lr`` decaying tenfold over
    ``num_steps``. ``*args, **kwargs`` go to the model and guide: the erased data alone
    (``erased=None``) or the full data with ``erased`` rows of ``plate``. ``loss_options`` go
    to the loss, e.g. ``{"proposal": "current", "anneal": 0.8}`` for the rKL on an erasure too
    informative for q(θ|D) (:class:`~pyro_unlearn.ReverseKL`); an annealed run never counts as
    converged before its temperature reaches 1.

    Example (``tests/test_forget.py`` runs it)::

        result = forget(model, guide, x, y, erased=idx, plate="data", method="rkl")
        result.guide, result.seconds, result.ess[-1]
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    if posterior is None:
        posterior = freeze(guide, *args, **kwargs)
    else:
        posterior.restore(guide)
    loss = _METHODS[method](
        posterior,
        lam,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=max_plate_nesting,
        **(loss_options or {}),
    )
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / max(num_steps, 1))})
    svi = SVI(unlearn(model, erased=erased, plate=plate), guide, optim, loss)
    result = ForgetResult(guide=guide, posterior=posterior)

    def step() -> float:
        value = svi.step(*args, **kwargs)
        if method == "rkl":
            result.ess.append(float(loss.ess))
        return value

    def annealed() -> bool:
        return float(getattr(loss, "temperature", 1.0)) == 1.0

    result.losses, result.converged, result.seconds = run_until_flat(
        step, num_steps, window, f"unlearning ({method}, λ={lam:g})", progress, annealed
    )
    return result


def run_until_flat(
    step: Callable[[], float],
    num_steps: int,
    window: int,
    desc: str,
    progress: bool,
    ready: Callable[[], bool] | None = None,
) -> tuple[list[float], bool, float]:
    """Call ``step`` (one SVI step, returning its loss) up to ``num_steps`` times under a tqdm
    bar, stopping once :func:`has_converged` over ``window`` steps (and ``ready()``, if given:
    an annealed loss is not the objective before its temperature reaches 1). Returns ``(losses,
    converged, seconds)``: the one loop of :func:`forget` and :func:`~pyro_unlearn.retrain`."""
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
