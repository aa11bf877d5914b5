"""The face every unlearning method's result shares: the unlearned posterior, the time it took,
whether the method vouches for it, and how far to trust it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trust import TrustDiagnostics

__all__ = ["UnlearningResult"]


@dataclass(kw_only=True)
class UnlearningResult:
    """Base of the results of :func:`~pyro_unlearn.forget`, :func:`~pyro_unlearn.retrain`,
    :func:`~pyro_unlearn.laplace_unlearn`, :func:`~pyro_unlearn.influence_unlearn` and
    :func:`~pyro_unlearn.mcmc_unlearn`.

    Every subclass has a ``posterior`` (a field or a property): the posterior the method
    produced, in a form that can be sampled and compared with any other (a
    :class:`~pyro_unlearn.FrozenPosterior`, or weighted draws for
    :func:`~pyro_unlearn.mcmc_unlearn`).

    Every result also says how far to trust it, judged without D_r (the unlearning methods'
    ``diagnose=True``, the default): ``verdict`` is ``"trusted"``, ``"approximate"`` or
    ``"retrain"`` (:data:`pyro_unlearn.trust.VERDICTS`), ``trust`` holds the evidence and
    ``summary()`` says it in one line. The verdict is never better than the method vouches
    for: a result its own rule did not call ``converged``, or one built on a repair (a clipped
    Laplace precision), is at most ``"approximate"`` (``"retrain"`` for a repair), whatever the
    diagnostics say (:class:`pyro_unlearn.trust.Caveats`). ``verdict`` is ``None`` when the
    result was not judged, and ``explanation`` says why: ``diagnose=False``, a model the
    diagnostics cannot take, or :func:`~pyro_unlearn.retrain`'s result, which is the reference
    the verdicts stand in for.

    Attributes:
        seconds: wall time of the method (diagnosing the result is not counted).
        converged: whether the method's own stopping rule was met (a convergence test, a
            tolerance); ``False`` means the result is what the step budget left.
        trust: the :class:`~pyro_unlearn.trust.TrustDiagnostics` of ``posterior`` against
            p̃(θ) ∝ q(θ|D)/p_adj(D_e|θ) (:func:`pyro_unlearn.trust.diagnose`, or for weighted
            draws :func:`pyro_unlearn.trust.diagnose_draws`), ``None`` when not diagnosed.
        verdict: ``"trusted"``, ``"approximate"`` or ``"retrain"``
            (:func:`pyro_unlearn.trust.verdict`, :func:`~pyro_unlearn.trust.weighted_verdict`,
            capped by the method's :class:`~pyro_unlearn.trust.Caveats`), ``None`` when not
            judged.
        explanation: the verdict's one-line explanation quoting its evidence, or why the
            result was not judged (:meth:`summary`).

    Example:
        >>> result = UnlearningResult(seconds=1.5, converged=True)
        >>> result.seconds, result.verdict, result.summary()
        (1.5, None, 'not diagnosed')
        >>> result.trust_row["verdict"], math.isnan(result.trust_row["pareto_k"])
        (None, True)
    """

    seconds: float = 0.0
    converged: bool = False
    trust: TrustDiagnostics | None = None
    verdict: str | None = None
    explanation: str = "not diagnosed"

    def summary(self) -> str:
        """One line: the verdict and its evidence (k̂, the KL estimate, the update's ESS), or
        why the result was not judged."""
        return self.explanation

    @property
    def trust_row(self) -> dict[str, Any]:
        """``verdict`` and the trust diagnostics by name (:meth:`TrustDiagnostics.as_dict
        <pyro_unlearn.trust.TrustDiagnostics.as_dict>`), NaN (``None`` for the verdict and
        the precision test) when not diagnosed: columns of a results table, the same for every
        method."""
        if self.trust is not None:
            return {"verdict": self.verdict, **self.trust.as_dict()}
        from .trust import TrustDiagnostics  # on use: trust imports the methods, which import us

        row: dict[str, Any] = {"verdict": self.verdict}
        for item in fields(TrustDiagnostics):
            row[item.name] = None if item.name.startswith("precision") else math.nan
        return row
