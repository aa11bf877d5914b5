"""The papers' λ-sweep: EUBO and reverse KL over a λ (or kept-mass) grid, a row per run."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from .forget import METHODS, forget
from .infer.adjusted_likelihood import check_lam
from .infer.threshold import MassScale, SmallKeptMassWarning, check_mass
from .params import ParamSnapshot
from .posterior import FrozenPosterior, freeze
from .validation import check_finite_data

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "FLOW_LAMBDAS",
    "LAMBDAS",
    "PAPER_PANELS",
    "SweepResult",
    "lambda_sweep",
    "plot_kl_against_lambda",
]

#: The λ grid of the papers' common protocol (Gaussian guides).
LAMBDAS = (0.5, 0.1, 1e-3, 1e-5, 1e-9, 0.0)
#: The λ grid used for flow guides (their log q* is numerical: no λ near 1).
FLOW_LAMBDAS = (1e-3, 1e-5, 1e-7, 1e-9, 0.0)


@dataclass
class SweepResult:
    """What :func:`lambda_sweep` returns.

    Attributes:
        rows: one dict per (method, λ), plus ``method="full"`` (q(θ|D), no unlearning): keys
            ``guide, method, lam`` (1.0 for full: λ = 1 unlearns nothing), ``mass`` (the share
            of q(θ|D)'s mass that λ's threshold keeps, :func:`~pyro_unlearn.infer.kept_mass`:
            the one asked for when sweeping ``masses``; 0 for full), the ``evaluate`` keys,
            ``seconds``, ``steps``, ``converged``, ``ess`` (the last step's, rKL only),
            ``verdict`` and ``pareto_k`` (:attr:`ForgetResult.trust_row
            <pyro_unlearn.ForgetResult.trust_row>`: ``None`` and NaN for ``full`` and for
            runs not diagnosed).
        posteriors: the frozen q(θ|D) (``"full"``) and each unlearned posterior
            (``"eubo λ=1e-05"``..., or ``"eubo mass=0.9"``... when sweeping ``masses``),
            e.g. for :func:`pyro_unlearn.metrics.to_inference_data`.
    """

    rows: list[dict[str, Any]]
    posteriors: dict[str, FrozenPosterior] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """:attr:`rows` as a tidy pandas table (needs pandas: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - pandas is in the experiments extra
            raise ImportError("SweepResult.table needs pandas: pip install pandas") from error
        return pd.DataFrame(self.rows)

    def plot(self, panels: dict[str, str] | None = None, title: str = "") -> Figure:
        """The papers' figure: log-scale KL against λ, a line per method and ``full`` dashed,
        one panel per ``{column: axis label}`` (default: the averaged predictive KL on D_e and
        on D_r, columns ``kl_erased_mean`` and ``kl_remaining_mean``). Returns the figure."""
        panels = panels or PAPER_PANELS
        columns = list(self.rows[0]) if self.rows else []
        missing = sorted(set(panels) - set(columns))
        if missing:
            raise ValueError(
                f"the table has no column {missing}; pass panels={{column: label}} naming "
                f"columns that evaluate returned: {columns}"
            )
        return plot_kl_against_lambda(self.rows, panels, title)


def lambda_sweep(
    model: Callable,
    guide: Callable,
    *args,
    evaluate: Callable[[FrozenPosterior], dict[str, Any]],
    lambdas: Sequence[float] | None = None,
    masses: Sequence[float] | None = None,
    methods: Sequence[str] = ("eubo", "rkl"),
    posterior: FrozenPosterior | None = None,
    guide_name: str = "guide",
    progress: bool = True,
    **forget_kwargs,
) -> SweepResult:
    """Unlearn with every method at every λ, each run from q(θ|D), and evaluate each result:
    the papers' λ-sweep.

    The grid is either λ itself (``lambdas``, the papers' protocol) or the share of q(θ|D)'s
    mass that the adjusted likelihood keeps (``masses``), which means the same in every
    dimension: each mass m becomes λ = :func:`~pyro_unlearn.infer.lam_for_mass` (q(θ|D), m)
    (λ = exp(−F⁻¹_{χ²_M}(m)/2) for a Gaussian q(θ|D) over M dimensions). A λ grid whose
    λ ∈ (0, 1) keep less than 5 % of the mass warns once
    (:class:`~pyro_unlearn.infer.SmallKeptMassWarning`): in a few dozen dimensions λ = 1e-5
    keeps almost nothing, and those runs unlearn nothing.

    ``evaluate(posterior)`` is called on q(θ|D) (the ``full`` row) and on every unlearned
    posterior (:attr:`ForgetResult.posterior <pyro_unlearn.ForgetResult>`). The live ``guide``
    is left holding q(θ|D).

    Arguments:
        model: the model, as trained.
        guide: the trained guide.
        args: the model's arguments, as :func:`~pyro_unlearn.forget` takes them.
        evaluate: the metrics of one posterior as a dict of numbers (e.g. the averaged
            predictive KL to the retrained posterior on D_e and on D_r, see
            :mod:`pyro_unlearn.metrics`).
        lambdas: the λ grid (default :data:`LAMBDAS`, unless ``masses`` is given).
        masses: instead of ``lambdas``, the grid of kept masses m ∈ (0, 1] (1: λ = 0).
        methods: names of :data:`pyro_unlearn.forget.METHODS` (``"eubo"``, ``"rkl"``).
        posterior: the frozen q(θ|D) (default: ``freeze(guide, *args)``).
        guide_name: the ``guide`` column of the rows.
        progress: show a progress bar over the runs.
        forget_kwargs: more arguments of :func:`~pyro_unlearn.forget` (``erased``, ``plate``,
            ``num_steps``, ``num_particles``, ``lr``...).

    Returns:
        A :class:`SweepResult`: a row per (method, λ) plus ``full``, and the posteriors.

    Raises:
        TypeError: for an ``evaluate`` that is not callable or returns no dict, or an
            argument :func:`~pyro_unlearn.forget` does not take.
        ValueError: for an empty or unknown ``methods``, a λ outside [0, 1], a mass outside
            (0, 1], both ``lambdas`` and ``masses``, a mass whose λ underflows a float
            (:meth:`MassScale.lam <pyro_unlearn.infer.MassScale.lam>`), non-finite data,
            or any error of :func:`~pyro_unlearn.forget`; a failed sweep leaves the live guide
            as it was before the call.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Figs. 3 and 5: the unlearned posteriors over λ).

    Example (``tests/test_sweep.py`` runs it)::

        result = lambda_sweep(model, guide, x_e, y_e, evaluate=lambda q: {"kl": kl_to_ref(q)})
        result.table.pivot(index="lam", columns="method", values="kl")
        # on the mass scale: keep 50 %, 90 %, 99 % and all of q(θ|D)'s mass
        lambda_sweep(model, guide, x_e, y_e, evaluate=..., masses=[0.5, 0.9, 0.99, 1.0])
    """
    lambdas, masses, methods = _check_sweep(
        guide, args, evaluate, lambdas, masses, methods, forget_kwargs
    )
    if posterior is None:
        posterior = freeze(guide, *args)
    elif not isinstance(posterior, FrozenPosterior):
        raise TypeError(f"posterior must be a FrozenPosterior, got {type(posterior).__name__}")
    lambdas, masses, labels = _grid(posterior, args, lambdas, masses)
    rows = [
        {
            "guide": guide_name,
            "method": "full",
            "lam": 1.0,  # λ = 1 unlearns nothing
            "mass": 0.0,
            **_evaluated(evaluate, posterior),
            "seconds": 0.0,
            "steps": 0,
            "converged": True,
            "ess": math.nan,
            "verdict": None,
            "pareto_k": math.nan,
        }
    ]
    posteriors = {"full": posterior}
    jobs = [(method, i) for i in range(len(lambdas)) for method in methods]
    with ParamSnapshot.transaction():  # a failed run leaves the guide as it was
        for method, i in tqdm(jobs, desc=f"λ-sweep ({guide_name})", disable=not progress):
            lam = lambdas[i]
            with warnings.catch_warnings():  # the grid's small kept masses warned above, once
                warnings.simplefilter("ignore", SmallKeptMassWarning)
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
            unlearned = result.posterior
            posteriors[f"{method} {labels[i]}"] = unlearned
            rows.append(
                {
                    "guide": guide_name,
                    "method": method,
                    "lam": lam,
                    "mass": masses[i],
                    **_evaluated(evaluate, unlearned),
                    "seconds": result.seconds,
                    "steps": result.num_steps,
                    "converged": result.converged,
                    "ess": result.ess[-1] if result.ess else math.nan,
                    "verdict": result.verdict,
                    "pareto_k": result.trust_row["pareto_k"],
                }
            )
        posterior.restore(guide)
    return SweepResult(rows, posteriors)


def _check_sweep(guide, args, evaluate, lambdas, masses, methods, forget_kwargs):
    """The argument checks of :func:`lambda_sweep`; returns λs (``None`` when sweeping masses)
    and masses (``None`` when sweeping λ) as floats, and the methods."""
    if not callable(evaluate):
        raise TypeError(
            f"evaluate must be a function of a posterior, got {type(evaluate).__name__}"
        )
    if isinstance(methods, str) or not list(methods):
        raise ValueError(f"methods must be a non-empty list of {sorted(METHODS)}, got {methods!r}")
    for method in methods:
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"methods must be among {sorted(METHODS)}, got {method!r}")
    if masses is not None:
        if lambdas is not None:
            raise ValueError(
                "pass lambdas (the λ grid) or masses (the kept-mass grid), not both; got "
                f"lambdas={lambdas!r} and masses={masses!r}"
            )
        if isinstance(masses, str) or not list(masses):
            raise ValueError(
                f"masses must be a non-empty list of numbers in (0, 1], got {masses!r}"
            )
        masses = [check_mass(mass) for mass in masses]
    else:
        lambdas = LAMBDAS if lambdas is None else lambdas
        if isinstance(lambdas, str) or not list(lambdas):
            raise ValueError(
                f"lambdas must be a non-empty list of numbers in [0, 1], got {lambdas!r}"
            )
        lambdas = [check_lam(lam) for lam in lambdas]
    taken = {"model", "guide", "args", "kwargs", "method", "lam", "mass", "posterior", "progress"}
    known = set(inspect.signature(forget).parameters) - taken
    unknown = sorted(set(forget_kwargs) - known)
    if unknown:
        raise TypeError(
            f"lambda_sweep got unknown argument(s) {unknown}; forget takes {sorted(known)}"
        )
    check_finite_data(args, {})
    return lambdas, masses, list(methods)


def _grid(
    posterior: FrozenPosterior,
    args: tuple,
    lambdas: list[float] | None,
    masses: list[float] | None,
) -> tuple[list[float], list[float], list[str]]:
    """Each run's λ, the share of q(θ|D)'s mass its threshold keeps, and its label; warns once
    for the λ ∈ (0, 1) of a λ grid that keep less than 5 % of the mass."""
    if masses is not None:
        scale = MassScale(posterior, *args)
        return [scale.lam(m) for m in masses], masses, [f"mass={m:g}" for m in masses]
    labels = [f"λ={lam:g}" for lam in lambdas]
    if all(lam == 0.0 for lam in lambdas):  # λ = 0 keeps everything; needs no log q*
        return lambdas, [1.0] * len(lambdas), labels
    # stacklevel 3: the warning points at the caller of lambda_sweep
    kept = MassScale(posterior, *args).warn_if_small(lambdas, stacklevel=3)
    return lambdas, kept, labels


def _evaluated(evaluate: Callable, posterior: FrozenPosterior) -> dict[str, Any]:
    metrics = evaluate(posterior)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"evaluate must return a dict of metrics, got {type(metrics).__name__}")
    return dict(metrics)


#: The panels of the papers' λ figures: averaged predictive KL to the retrained posterior.
PAPER_PANELS = {
    "kl_erased_mean": "averaged KL on $D_e$",
    "kl_remaining_mean": "averaged KL on $D_r$",
}

_ZERO = 1e-12  # where λ = 0 sits on the log axis


def plot_kl_against_lambda(
    rows: Sequence[dict[str, Any]], panels: dict[str, str], title: str = ""
) -> Figure:
    """The papers' figure: log-scale KL against λ.

    One line per method and a dashed line for ``full`` (no unlearning); λ = 0 is drawn at the
    left end.

    Arguments:
        rows: :attr:`SweepResult.rows`.
        panels: ``{column: axis label}``, one panel each.
        title: the figure's title.

    Returns:
        The matplotlib figure.

    Example::

        fig = plot_kl_against_lambda(sweep.rows, PAPER_PANELS, title="banknote")
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    methods = sorted({r["method"] for r in rows} - {"full"})
    lams = sorted({r["lam"] for r in rows if r["method"] != "full"})
    for ax, (column, label) in zip(axes[0], panels.items(), strict=True):
        for method in methods:
            sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["lam"])
            ax.plot([r["lam"] or _ZERO for r in sel], [r[column] for r in sel], "o-", label=method)
        full = [r[column] for r in rows if r["method"] == "full"]
        if full:
            ax.axhline(full[0], color="k", ls="--", label="full (no unlearning)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [lam or _ZERO for lam in lams]
        ax.set_xticks(
            ticks,
            [
                "0" if t == _ZERO else f"$10^{{{round(math.log10(t))}}}$" if t < 0.1 else f"{t:g}"
                for t in ticks
            ],
            fontsize=8,
        )
        ax.set_xlabel("λ")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
