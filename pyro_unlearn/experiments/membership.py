"""The membership-inference studies' paired comparison of posteriors over seeds.

The studies (``moons`` and ``banknote``) score every posterior with the library's attacks
(:func:`pyro_unlearn.metrics.membership_attack` on the features of
:func:`pyro_unlearn.metrics.loss_and_entropy`); this module only tabulates their scores. Rows
are dicts with a ``"posterior"`` key ("full", "retrained", "retrained again" — a second
retraining from another random stream, the optimiser's noise floor — and the unlearned ones)
and one value per metric, one row per posterior and seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["compare", "compared_posteriors", "summarise"]


def compare(rows: list[dict], name: str, metric: str) -> dict:
    """Over the seeds, for one unlearned posterior ``name`` and one ``metric``: on how many seeds
    |u − r| < |u − f| (u unlearned, r retrained, f full), whether it holds on the means, the mean
    absolute differences, the noise floor |r′ − r| (r′ the second retraining), the signed paired
    differences f − r and u − r (mean and sd over seeds: the spread of whatever the seeds vary),
    and ``gap_over_noise`` = |f − r| / |r′ − r| (≫ 1: the gap is resolved; None where the floor
    is exactly 0, a discrete score the second retraining left unchanged).

        >>> rows = [{"posterior": p, "acc": v} for p, v in
        ...         [("full", 0.6), ("retrained", 0.5), ("retrained again", 0.5), ("rkl", 0.52)]]
        >>> c = compare(rows, "rkl", "acc")
        >>> c["closer_seeds"], c["closer_on_means"], c["gap_over_noise"]
        (1, True, None)
    """
    by: dict[str, list[float]] = {r["posterior"]: [] for r in rows}
    for r in rows:
        by[r["posterior"]].append(r[metric])
    u, r, f, again = (np.array(by[k]) for k in (name, "retrained", "full", "retrained again"))
    noise = float(np.abs(again - r).mean())

    def sd(values: np.ndarray) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    return {
        "posterior": name,
        "metric": metric,
        "closer_seeds": int((np.abs(u - r) < np.abs(u - f)).sum()),
        "num_seeds": len(u),
        "closer_on_means": bool(abs(u.mean() - r.mean()) < abs(u.mean() - f.mean())),
        "mean_unlearned": float(u.mean()),
        "mean_retrained": float(r.mean()),
        "mean_full": float(f.mean()),
        "abs_unlearned_minus_retrained": float(np.abs(u - r).mean()),
        "abs_unlearned_minus_full": float(np.abs(u - f).mean()),
        "abs_full_minus_retrained": float(np.abs(f - r).mean()),
        "abs_retrained_again_minus_retrained": noise,
        "full_minus_retrained_mean": float((f - r).mean()),
        "full_minus_retrained_std": sd(f - r),
        "unlearned_minus_retrained_mean": float((u - r).mean()),
        "unlearned_minus_retrained_std": sd(u - r),
        "gap_over_noise": float(np.abs(f - r).mean()) / noise if noise > 0 else None,
    }


def summarise(rows: list[dict], names: Sequence[str], columns: Sequence[str]) -> list[dict]:
    """Per posterior in ``names``: the mean and the sd (ddof 1; 0 for one seed) of each column
    over the seeds, as ``<column>_mean`` and ``<column>_std``."""
    summary = []
    for name in names:
        values = np.array([[r[c] for c in columns] for r in rows if r["posterior"] == name])
        sd = values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(columns))
        summary.append(
            {
                "posterior": name,
                **{f"{c}_mean": float(m) for c, m in zip(columns, values.mean(0), strict=True)},
                **{f"{c}_std": float(v) for c, v in zip(columns, sd, strict=True)},
            }
        )
    return summary


def compared_posteriors(full, full_fit: tuple, references: Sequence, sweep) -> tuple[dict, dict]:
    """The posteriors a membership study compares, by name, and each one's fit ``(seconds,
    steps, converged)``: ``"full"`` (``full``, fitted as ``full_fit`` says), ``"retrained"`` and
    ``"retrained again"`` (two :func:`~pyro_unlearn.retrain` results from different random
    streams) and every unlearned posterior of a :func:`~pyro_unlearn.lambda_sweep` result."""
    posteriors, fits = {"full": full}, {"full": full_fit}
    for name, ref in zip(("retrained", "retrained again"), references, strict=True):
        posteriors[name], fits[name] = ref.posterior, (ref.seconds, len(ref.losses), ref.converged)
    unlearned = list(sweep.posteriors.items())[1:]  # after "full", in the table's row order
    for (name, q), row in zip(unlearned, sweep.table.to_dict("records")[1:], strict=True):
        posteriors[name] = q
        fits[name] = (row["seconds"], row["steps"], row["converged"])
    return posteriors, fits
