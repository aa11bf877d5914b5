"""The moons' λ-sweep rows solved in the guide's geometry: the reverse KL of a Gaussian q(u) by
moment matching (:func:`pyro_unlearn.infer.gaussian_reverse_kl`) instead of SGD."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_unlearn as pu
from pyro_unlearn.infer import gaussian_eubo, gaussian_reverse_kl

__all__ = ["SOLVERS", "full_row", "natural_methods", "natural_sweep"]

#: The ways :func:`~pyro_unlearn.experiments.moons.run` solves each method: ``"sgd"``, SVI
#: steps on the loss (``pu.forget``, every guide); ``"natural"``, where the guide is an
#: AutoNormal, AutoDiagonalNormal or AutoMultivariateNormal, the reverse KL by moment matching
#: (:func:`~pyro_unlearn.infer.gaussian_reverse_kl`) and the EUBO by natural-gradient steps
#: (:func:`~pyro_unlearn.infer.gaussian_eubo`); other guides by SGD.
SOLVERS = ("sgd", "natural")


def natural_methods(solver: str, guide: Any) -> tuple[str, ...]:
    """The methods solved in the guide's geometry for ``solver`` and this guide:
    ``("eubo", "rkl")`` for ``solver="natural"`` and an AutoNormal, AutoDiagonalNormal or
    AutoMultivariateNormal, else none (the SGD sweep runs them).

    Arguments:
        solver: one of :data:`SOLVERS`.
        guide: the live guide holding q(u|D).

    Returns:
        The methods' names.

    Example:
        >>> natural_methods("sgd", None)
        ()
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    takes = isinstance(guide, AutoNormal | AutoDiagonalNormal | AutoMultivariateNormal)
    return ("eubo", "rkl") if solver == "natural" and takes else ()


def full_row(guide_name: str, evaluate: Callable, posterior: pu.FrozenPosterior) -> dict:
    """The sweep's ``full`` row (q(u|D), λ = 1, nothing unlearned), as
    :func:`~pyro_unlearn.lambda_sweep` writes it, where no SGD sweep runs.

    Arguments:
        guide_name: the row's ``guide``.
        evaluate: the posterior's metrics.
        posterior: q(u|D), frozen.

    Returns:
        The row.
    """
    row = {"guide": guide_name, "method": "full", "lam": 1.0, "mass": 0.0, **evaluate(posterior)}
    nan = float("nan")
    return row | dict(seconds=0.0, steps=0, converged=True, ess=nan, verdict=None, pareto_k=nan)


def natural_sweep(
    model: Callable,
    guide: Any,
    x_e: torch.Tensor,
    y_e: torch.Tensor,
    *,
    methods: Sequence[str],
    evaluate: Callable[[pu.FrozenPosterior], dict],
    lambdas: Sequence[float],
    posterior: pu.FrozenPosterior,
    guide_name: str,
    num_samples: int,
    num_steps: int,
    diagnose_samples: int,
) -> tuple[list[dict], dict[str, pu.FrozenPosterior]]:
    """Each method at each λ in the guide's geometry, each run from q(u|D): the reverse KL by
    :func:`~pyro_unlearn.infer.gaussian_reverse_kl` (the paper's proposal q(u|D), ``num_samples``
    draws a step), the EUBO by :func:`~pyro_unlearn.infer.gaussian_eubo` (its own defaults), as
    rows with the columns of :func:`~pyro_unlearn.lambda_sweep`'s plus ``solver``; the guide
    holds q(u|D) afterwards.

    Arguments:
        model: the Pyro model.
        guide: the live Gaussian autoguide.
        x_e, y_e: the erased data.
        methods: ``"eubo"`` and/or ``"rkl"``.
        evaluate: the posterior's metrics.
        lambdas: the λ grid.
        posterior: q(u|D), frozen.
        guide_name: the rows' ``guide``.
        num_samples: the reverse KL's u-draws per step.
        num_steps: the most steps (each run stops earlier by its own rule).
        diagnose_samples: draws of the trust check.

    Returns:
        ``(rows, posteriors)``, the posteriors keyed ``"<method> λ=<λ>"`` as the sweep's.
    """
    rows, posteriors = [], {}
    for lam in lambdas:
        for method in methods:
            options = {"num_samples": num_samples} if method == "rkl" else {}
            solve = gaussian_reverse_kl if method == "rkl" else gaussian_eubo
            with warnings.catch_warnings():  # collapse is reported per row (converged, ess)
                warnings.simplefilter("ignore", pu.LowESSWarning)
                warnings.simplefilter("ignore", pu.SmallKeptMassWarning)  # warned once above
                result = solve(
                    model, guide, x_e, y_e, posterior=posterior, lam=lam, num_steps=num_steps,
                    progress=False, diagnose_samples=diagnose_samples, **options,
                )  # fmt: skip
                mass = 1.0 if lam == 0.0 else pu.kept_mass(posterior, lam, x_e, y_e)
            posteriors[f"{method} λ={lam:g}"] = result.posterior
            rows.append(
                {
                    "guide": guide_name,
                    "method": method,
                    "lam": lam,
                    "mass": mass,
                    **evaluate(result.posterior),
                    "seconds": result.seconds,
                    "steps": result.num_steps,
                    "converged": result.converged,
                    "ess": result.ess[-1] if result.ess else float("nan"),
                    "verdict": result.verdict,
                    "pareto_k": result.trust_row["pareto_k"],
                    "solver": "natural",
                }
            )
    posterior.restore(guide)
    return rows, posteriors
