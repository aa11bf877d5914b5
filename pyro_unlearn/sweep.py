"""The papers' λ-sweep: EUBO and reverse KL over a λ grid, one tidy row per (method, λ)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm import tqdm

from .forget import forget
from .posterior import FrozenPosterior, freeze

__all__ = ["LAMBDAS", "FLOW_LAMBDAS", "SweepResult", "lambda_sweep"]

#: The λ grid of the papers' common protocol (Gaussian guides) and the one used for flows.
LAMBDAS = (0.5, 0.1, 1e-3, 1e-5, 1e-9, 0.0)
FLOW_LAMBDAS = (1e-3, 1e-5, 1e-7, 1e-9, 0.0)


@dataclass
class SweepResult:
    """What :func:`lambda_sweep` returns.

    Attributes:
        table: one row per (method, λ), plus ``method="full"`` (q(θ|D), no unlearning): columns
            ``guide, method, lam`` (1.0 for full: λ = 1 unlearns nothing), the ``evaluate``
            columns, ``seconds``, ``steps``, ``converged`` and ``ess`` (the last step's, rKL only).
        posteriors: the frozen q(θ|D) (``"full"``) and each unlearned posterior
            (``"eubo λ=1e-05"``...), e.g. for :func:`pyro_unlearn.metrics.to_inference_data`.
    """

    table: pd.DataFrame
    posteriors: dict[str, FrozenPosterior] = field(default_factory=dict)

    def plot(self, panels: dict[str, str] | None = None, title: str = ""):
        """The papers' figure: log-scale KL against λ, a line per method and ``full`` dashed,
        one panel per ``{column: axis label}`` (default: the averaged predictive KL on D_e and
        on D_r, columns ``kl_erased_mean`` and ``kl_remaining_mean``). Returns the figure."""
        from .plots import PAPER_PANELS, plot_kl_against_lambda

        panels = panels or PAPER_PANELS
        missing = sorted(set(panels) - set(self.table.columns))
        if missing:
            raise ValueError(
                f"the table has no column {missing}; pass panels={{column: label}} naming "
                f"columns that evaluate returned: {list(self.table.columns)}"
            )
        return plot_kl_against_lambda(self.table.to_dict("records"), panels, title)


def lambda_sweep(
    model: Callable,
    guide: Callable,
    *args,
    evaluate: Callable[[FrozenPosterior], dict[str, Any]],
    lambdas: Sequence[float] = LAMBDAS,
    methods: Sequence[str] = ("eubo", "rkl"),
    posterior: FrozenPosterior | None = None,
    guide_name: str = "guide",
    progress: bool = True,
    **forget_kwargs,
) -> SweepResult:
    """Unlearn with every method at every λ, each run from q(θ|D), and evaluate each result.

    ``evaluate(posterior)`` returns the metrics of one posterior as a dict of numbers (e.g. the
    averaged predictive KL to the retrained posterior on D_e and on D_r, see
    :mod:`pyro_unlearn.metrics`); it is called on q(θ|D) (the ``full`` row) and on every
    unlearned posterior. ``*args`` and ``forget_kwargs`` (``erased``, ``plate``, ``num_steps``,
    ``num_particles``, ``lr``...) go to :func:`~pyro_unlearn.forget`. The live ``guide`` is left
    holding q(θ|D).

    Example (``tests/test_sweep.py`` runs it)::

        result = lambda_sweep(model, guide, x_e, y_e, evaluate=lambda q: {"kl": kl_to_ref(q)})
        result.table.pivot(index="lam", columns="method", values="kl")
    """
    for method in methods:
        if method not in ("eubo", "rkl"):
            raise ValueError(f"methods must be 'eubo' or 'rkl', got {method!r}")
    posterior = posterior if posterior is not None else freeze(guide, *args)
    rows = [
        {
            "guide": guide_name,
            "method": "full",
            "lam": 1.0,  # λ = 1 unlearns nothing
            **evaluate(posterior),
            "seconds": 0.0,
            "steps": 0,
            "converged": True,
            "ess": math.nan,
        }
    ]
    posteriors = {"full": posterior}
    jobs = [(method, lam) for lam in lambdas for method in methods]
    for method, lam in tqdm(jobs, desc=f"λ-sweep ({guide_name})", disable=not progress):
        result = forget(
            model,
            guide,
            *args,
            method=method,
            lam=lam,
            posterior=posterior,
            progress=False,
            **forget_kwargs,
        )
        unlearned = freeze(result.guide, *args)
        posteriors[f"{method} λ={lam:g}"] = unlearned
        rows.append(
            {
                "guide": guide_name,
                "method": method,
                "lam": float(lam),
                **evaluate(unlearned),
                "seconds": result.seconds,
                "steps": result.num_steps,
                "converged": result.converged,
                "ess": result.ess[-1] if result.ess else math.nan,
            }
        )
    posterior.restore(guide)
    return SweepResult(pd.DataFrame(rows), posteriors)
