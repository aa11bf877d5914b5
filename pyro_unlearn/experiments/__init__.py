"""The papers' reproductions, used by the ``pyro-unlearn`` command and the tutorials."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TRUST_COLUMNS", "json_safe", "trust_columns"]

#: The trust columns of every Bayesian-unlearning row, judged without D_r
#: (:mod:`pyro_unlearn.trust`): the verdict, the PSIS k̂ of p̃/q_u and the estimate of
#: KL(q_u ‖ p̃), p̃ ∝ q(θ|D)/p_adj(D_e|θ; λ).
TRUST_COLUMNS = ("verdict", "pareto_k", "kl_to_target")


def json_safe(value: Any) -> Any:
    """A result value as strict JSON can hold it: NaN and ±∞ become None (``json.dumps`` would
    write ``NaN`` or ``Infinity``, which are not JSON; an infinite PSIS k̂, say). Example::

        >>> json_safe(float("nan")), json_safe(float("inf")), json_safe(0.5)
        (None, None, 0.5)
    """
    return None if isinstance(value, float) and not math.isfinite(value) else value


def trust_columns(judged: Any = None) -> dict[str, Any]:
    """The :data:`TRUST_COLUMNS` of one unlearned posterior.

    Arguments:
        judged: a method's result (:class:`pyro_unlearn.UnlearningResult`: its ``verdict`` and
            ``trust``), :class:`pyro_unlearn.trust.TrustDiagnostics` (judged here by
            :func:`pyro_unlearn.trust.verdict`), or ``None`` (not diagnosed: ``None`` and NaN).

    Returns:
        ``{"verdict", "pareto_k", "kl_to_target"}``.

    Example::

        >>> trust_columns()
        {'verdict': None, 'pareto_k': nan, 'kl_to_target': nan}
    """
    from pyro_unlearn.trust import TrustDiagnostics, verdict

    if judged is None:
        return {"verdict": None, "pareto_k": math.nan, "kl_to_target": math.nan}
    if isinstance(judged, TrustDiagnostics):
        return {
            "verdict": verdict(judged).label,
            "pareto_k": judged.pareto_k,
            "kl_to_target": judged.kl,
        }
    row = judged.trust_row
    return {"verdict": row["verdict"], "pareto_k": row["pareto_k"], "kl_to_target": row["kl"]}
