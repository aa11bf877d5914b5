"""Figures of the reproductions (matplotlib, headless-safe)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt

__all__ = ["PAPER_PANELS", "plot_kl_against_lambda"]

#: The panels of the papers' λ figures: averaged predictive KL to the retrained posterior.
PAPER_PANELS = {
    "kl_erased_mean": "averaged KL on $D_e$",
    "kl_remaining_mean": "averaged KL on $D_r$",
}

_ZERO = 1e-12  # where λ = 0 sits on the log axis


def plot_kl_against_lambda(rows: Sequence[dict], panels: dict[str, str], title: str = ""):
    """Log-scale KL against λ, one line per method and a dashed line for ``full`` (no
    unlearning), one panel per ``{column: label}`` in ``panels``. λ = 0 is drawn at the left end.
    Returns the figure."""
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
