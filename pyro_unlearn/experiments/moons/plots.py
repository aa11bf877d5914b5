"""The moons' figures: the data, predictive surfaces, the KL panels, the membership study."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from pyro_unlearn.experiments.datasets import MoonsData
from pyro_unlearn.metrics import predictive_distribution
from pyro_unlearn.sweep import PAPER_PANELS, plot_kl_against_lambda

from .reproduction import AUTHORS

__all__ = [
    "plot_data",
    "plot_kl",
    "plot_membership_study",
    "plot_surfaces",
    "predictive_surface",
]

#: The scores :func:`plot_membership_study` draws by default.
_PLOTTED = (
    "mia_accuracy",
    "mia_auc",
    "mia_logistic_auc",
    "loss_gap",
    "mia_population_auc",
    "population_loss_gap",
)


def plot_membership_study(study: dict, metrics: Sequence[str] | None = None, columns: int = 3):
    """Each posterior's score minus the retrained posterior's, per non-member draw (dots; the
    same draw for every posterior) and their mean (bars), one panel per metric.

    Arguments:
        study: :func:`membership_study`'s result.
        metrics: the scores (default: the matched attacks' accuracy and AUC, the logistic
            attack's AUC and the loss gap, then the population's AUC and loss gap).
        columns: panels per row.

    Returns:
        The figure.
    """
    metrics = list(metrics or _PLOTTED)
    names = [s["posterior"] for s in study["summary"]]
    by = {(r["seed"], r["posterior"]): r for r in study["rows"]}
    seeds = study["settings"]["seeds"]
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, name in enumerate(names):
            paired = np.array([by[s, name][metric] - by[s, "retrained"][metric] for s in seeds])
            color = "C3" if name == "full" else "C2" if name.startswith("retrained") else "C0"
            ax.plot([i] * len(paired), paired, "o", color=color, alpha=0.4, ms=4)
            ax.plot(i, paired.mean(), "_", color="k", ms=14, mew=2)
        ax.axhline(0, color="C2", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{metric} − retrained", fontsize=9)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(
        f"moons, {study['settings']['scenario']} erasure: each posterior minus the retrained one, "
        f"per non-member draw (dots) and mean (bars), {len(seeds)} draws",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _scatter(ax, data: MoonsData, inducing: bool = False) -> None:
    x, y, erased = data.x.cpu(), data.y.cpu(), data.mask.cpu()
    for label, color in ((0, "tab:blue"), (1, "tab:red")):
        keep = (y == label) & ~erased
        ax.scatter(
            *x[keep].T, s=14, c=color, edgecolors="k", linewidths=0.4, label=f"class {label}"
        )
        gone = (y == label) & erased
        ax.scatter(*x[gone].T, s=40, c=color, marker="X", edgecolors="k", linewidths=0.6)
    ax.scatter([], [], s=40, c="w", marker="X", edgecolors="k", label="erased ($D_e$)")
    if inducing:
        ax.scatter(
            *data.inducing.cpu().T,
            s=36,
            marker="^",
            c="gold",
            edgecolors="k",
            label="inducing inputs",
        )


def plot_data(data: MoonsData, ax=None):
    """The moons with D_e marked (crosses) and the inducing inputs (triangles).

    Arguments:
        data: the moons and their erasure.
        ax: the axes to draw on (default: a new figure's).

    Returns:
        The figure.
    """
    fig, ax = plt.subplots(figsize=(5, 3.6)) if ax is None else (ax.figure, ax)
    _scatter(ax, data, inducing=True)
    ax.set(
        xlabel="$x_0$",
        ylabel="$x_1$",
        title=f"moons, {data.scenario} erasure: {len(data.erased)} of {len(data.y)} erased",
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def predictive_surface(
    model: Callable,
    posterior: Callable,
    grid: torch.Tensor,
    num_samples: int = 500,
    chunk: int = 500,
) -> torch.Tensor:
    """p(y = 1 | x) at every row of ``grid``, the Monte-Carlo mean over ``num_samples``
    u-samples (fresh ones for each ``chunk`` of rows, bounding the memory).

    Arguments:
        model: the Pyro model whose site ``"y"`` is the predictive.
        posterior: q(u), a guide.
        grid: inputs, shape (points, 2).
        num_samples: u-samples per chunk.
        chunk: rows per chunk.

    Returns:
        The probabilities, shape (points,).
    """
    return torch.cat(
        [
            predictive_distribution(model, posterior, part, site="y", num_samples=num_samples).probs
            for part in grid.split(chunk)
        ]
    )


def plot_surfaces(
    model: Callable,
    posteriors: dict[str, Callable],
    data: MoonsData,
    *,
    resolution: int = 60,
    num_samples: int = 500,
    columns: int = 3,
    title: str = "",
):
    """The predictive probability p(y = 1 | x) of each posterior on a grid, as filled contours
    (the 0.5 line drawn), with the data and D_e marked.

    Arguments:
        model: the Pyro model whose site ``"y"`` is the predictive.
        posteriors: ``{panel title: posterior}``.
        data: the moons and their erasure.
        resolution: grid points per axis.
        num_samples: u-samples of each predictive.
        columns: panels per row.
        title: the figure's title.

    Returns:
        The figure.
    """
    x = data.x
    lo, hi = x.min(0).values - 0.5, x.max(0).values + 0.5
    g0 = torch.linspace(float(lo[0]), float(hi[0]), resolution, dtype=x.dtype, device=x.device)
    g1 = torch.linspace(float(lo[1]), float(hi[1]), resolution, dtype=x.dtype, device=x.device)
    mesh = torch.stack(torch.meshgrid(g0, g1, indexing="xy"), -1)
    rows = math.ceil(len(posteriors) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.6 * columns + 1, 3 * rows),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    levels = np.linspace(0, 1, 11)
    for ax, (name, posterior) in zip(axes.flat, posteriors.items(), strict=False):
        probs = predictive_surface(model, posterior, mesh.reshape(-1, 2), num_samples)
        probs = probs.reshape(resolution, resolution).cpu()
        filled = ax.contourf(g0.cpu(), g1.cpu(), probs, levels=levels, cmap="RdBu_r", alpha=0.8)
        ax.contour(g0.cpu(), g1.cpu(), probs, levels=[0.5], colors="k", linewidths=1)
        _scatter(ax, data)
        ax.set_title(name, fontsize=10)
    for ax in axes.flat[len(posteriors) :]:
        ax.axis("off")
    fig.colorbar(filled, ax=axes, shrink=0.8, label="$p(y=1|x)$")
    if title:
        fig.suptitle(title)
    return fig


def plot_kl(rows: Sequence[dict], title: str = "", authors: bool = True):
    """The paper's Fig. 2 panels (:func:`~pyro_unlearn.sweep.plot_kl_against_lambda`: averaged
    KL on D_e and on D_r against λ), with the authors' numbers (:data:`AUTHORS`, sorted erasure)
    overlaid as dotted lines of the same colours when ``authors``.

    Arguments:
        rows: :func:`run`'s rows of one model variant.
        title: the figure's title.
        authors: whether to overlay the authors' numbers.

    Returns:
        The figure.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Fig. 2).
    """
    fig = plot_kl_against_lambda(rows, PAPER_PANELS, title=title)
    if not authors:
        return fig
    methods = sorted({r["method"] for r in rows} - {"full"})
    for i, ax in enumerate(fig.axes[: len(PAPER_PANELS)]):
        for color, method in enumerate(methods):
            lams = sorted(AUTHORS.get(method, {}))
            ax.plot(
                [lam or 1e-12 for lam in lams],
                [AUTHORS[method][lam][i] for lam in lams],
                ":x",
                color=f"C{color}",
                label=f"{method} (authors)",
            )
        ax.axhline(AUTHORS["full"][1.0][i], color="gray", ls=":", label="full (authors)")
    fig.axes[0].legend(fontsize=7)
    return fig
