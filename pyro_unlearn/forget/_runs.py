"""What every run of one :func:`~pyro_unlearn.forget` call shares, and the pieces of a run
that do not step SVI: the natural-gradient solvers for Gaussian guides, and the trust check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro

from ..exact import NotNormalizableError
from ..guides import is_gaussian
from ..infer import gaussian_eubo, gaussian_reverse_kl
from ..posterior import FrozenPosterior
from ..trust import Caveats, attach_trust
from .auto import Rung
from .result import ForgetResult

__all__ = ["Run", "attach_forget_trust", "run_natural"]


@dataclass(frozen=True)
class Run:
    """What every run of one forget call shares: the model, guide, data and settings."""

    model: Callable
    guide: Callable
    wrapped: Callable
    args: tuple
    kwargs: dict
    erased: Any
    plate: Any
    num_particles: int
    vectorize_particles: bool
    max_plate_nesting: float
    optim: pyro.optim.PyroOptim | None
    lr: float
    num_steps: int
    window: int
    progress: bool
    diagnose: bool
    diagnose_samples: int


def run_natural(run: Run, original: FrozenPosterior, rung: Rung, lam: float) -> ForgetResult | None:
    """A rung of ``method="auto"`` solved in the Gaussian guide's own geometry, as a
    :class:`ForgetResult` (``solver="natural"``): the reverse KL by damped moment matching
    (:func:`~pyro_unlearn.infer.gaussian_reverse_kl`), the EUBO by natural-gradient steps
    (:func:`~pyro_unlearn.infer.gaussian_eubo`); ``None`` where neither applies (another
    guide, a model without a particle plate): the SGD run then. A division that is not a
    distribution (:class:`~pyro_unlearn.exact.NotNormalizableError`) is raised, not handed to
    SGD, which would fit it regardless."""
    if not run.vectorize_particles or not is_gaussian(run.guide):
        return None
    solve = {"rkl": gaussian_reverse_kl, "eubo": gaussian_eubo}.get(rung.method)
    if solve is None:
        return None
    try:
        natural = solve(
            run.model, run.guide, *run.args, erased=run.erased, plate=run.plate,
            posterior=original, lam=lam, num_steps=run.num_steps, progress=run.progress,
            diagnose=run.diagnose, diagnose_samples=run.diagnose_samples, **rung.options,
            **run.kwargs,
        )  # fmt: skip
    except NotNormalizableError:
        raise
    except (TypeError, ValueError):  # AutoLowRankMultivariateNormal, no particle plate...
        return None
    eubo = rung.method == "eubo"
    result = ForgetResult(
        guide=run.guide,
        posterior=natural.posterior,
        original=original,
        losses=list(natural.losses) if eubo else [],
        diagnostics=(
            {"step_size": natural.step_sizes}
            if eubo
            else {"ess": natural.ess, "temperature": natural.temperature}
        ),
        seconds=natural.seconds,
        converged=natural.converged,
        method=rung.method,
        loss_options=dict(rung.options),
        lam=float(lam),
        solver="natural",
        collapsed=natural.collapsed,
        likelihood=natural.likelihood,
    )
    result.trust, result.verdict = natural.trust, natural.verdict
    result.explanation = natural.explanation
    return result


def attach_forget_trust(result: ForgetResult, run: Run, lam: float) -> None:
    """Diagnose ``result.posterior`` (:func:`pyro_unlearn.trust.attach_trust`) and write the
    diagnostics, verdict and explanation into ``result``; a run whose weights collapsed is at
    most ``"approximate"``; a model the loss ran by ``vmap`` is diagnosed by ``vmap`` too; one
    the diagnostics cannot take (run one particle at a time) leaves ``verdict`` ``None`` and
    the reason in the explanation."""
    if result.particles == "sequential":
        result.explanation = (
            "not diagnosed: the model cannot take a particle plate (the loss drew its particles "
            "one at a time), and the trust diagnostics draw θ in one pyro.plate or by vmap"
        )
        return
    collapsed = ["the weights collapsed during the run"] if result.collapsed else []
    attach_trust(
        result, run.model, result.original, run.args, run.kwargs, erased=run.erased,
        plate=run.plate, lam=lam, num_samples=run.diagnose_samples,
        vmap=result.particles == "vmap", caveats=Caveats(approximate=collapsed),
    )  # fmt: skip
