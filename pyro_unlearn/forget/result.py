"""What :func:`~pyro_unlearn.forget` returns: the unlearned posterior and the run's record."""

from __future__ import annotations

import math  # noqa: F401 (the doctest)
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..posterior import FrozenPosterior
from ..results import UnlearningResult

__all__ = ["ForgetResult"]


@dataclass(kw_only=True)
class ForgetResult(UnlearningResult):
    """What :func:`~pyro_unlearn.forget` returns.

    Attributes:
        guide: the unlearned guide (the live guide, trained in place).
        posterior: the unlearned posterior, frozen at the end of the run: an independent
            :class:`~pyro_unlearn.FrozenPosterior`, unchanged when the live guide moves on.
        original: the frozen q(θ|D) the run started from, untouched: pass it as
            ``forget(..., posterior=result.original)`` to serve a later request from q(θ|D).
        losses: the loss of every step.
        diagnostics: the loss's per-step diagnostics (its ``diagnostics()``), one list per name,
            one value per step: ``"ess"`` and ``"temperature"`` for the reverse KL, none for
            the EUBO.
        seconds: wall time of the optimisation (freezing and diagnosing the result are not
            counted).
        converged: whether the convergence rule stopped the run before ``num_steps``, at
            temperature β = 1 for an annealed loss, with weights that had not collapsed over
            the last window (``collapsed``).
        collapsed: whether the loss's importance weights had collapsed over the last window
            (:func:`~pyro_unlearn.forget.convergence.weights_collapsed`: median ESS below
            max(2, 1 % of the particles)); a
            :class:`~pyro_unlearn.forget.WeightCollapseWarning` was raised.
        trust, verdict, explanation: how far to trust ``posterior``, as on every
            :class:`~pyro_unlearn.results.UnlearningResult` (``summary()``, ``trust_row``).
        method: the loss that produced ``posterior`` (a key of
            :data:`~pyro_unlearn.forget.methods.METHODS`), with ``loss_options`` its options
            and ``lam`` its λ: under ``method="auto"``, those of the attempt chosen, or
            ``"auto"`` with ``posterior`` q(θ|D) itself when no run came closer to the target
            than q(θ|D) (:func:`~pyro_unlearn.forget.auto.nothing_kept`).
        loss_options: the loss options of that run.
        lam: the adjusted likelihood's λ of that run.
        attempts: under ``method="auto"``, one row per run tried, in order (method, options,
            λ, verdict, k̂, KL estimate, converged, collapsed, seconds, steps, whether chosen,
            error); empty for an explicit ``method``.
        solver: ``"sgd"`` (SVI steps on the loss) or ``"natural"`` (steps in a Gaussian
            guide's own geometry: what ``method="auto"`` runs for AutoNormal,
            AutoDiagonalNormal and AutoMultivariateNormal guides; the reverse KL by damped
            moment matching, :func:`~pyro_unlearn.infer.gaussian_reverse_kl`, with ``losses``
            empty; the EUBO by natural-gradient steps, :func:`~pyro_unlearn.infer.gaussian_eubo`,
            with its EUBO per step in ``losses``).
        likelihood: for the natural solvers, how log p(D_e|θ) was evaluated: ``"fused"`` (the
            model recorded once, :func:`~pyro_unlearn.infer.erased_log_likelihood_fn`) or
            ``"traced: <why the recording was not used>"``; empty for SGD runs.
        particles: how the loss drew its particles (:attr:`UnlearningLoss.particles
            <pyro_unlearn.infer.base.UnlearningLoss>`): ``"vectorized"``, ``"vmap"`` (a model
            that cannot take a particle plate, batched by ``torch.func.vmap``) or
            ``"sequential"``.

    Example:
        >>> result = ForgetResult(guide=print, posterior=None, original=None, losses=[2.0, 1.0],
        ...                       diagnostics={"ess": [60.0, 50.0]})
        >>> result.num_steps, result.ess, result.verdict
        (2, [60.0, 50.0], None)
        >>> result.summary()
        'not diagnosed'
        >>> result.trust_row["verdict"], math.isnan(result.trust_row["pareto_k"])
        (None, True)
    """

    guide: Callable
    posterior: FrozenPosterior
    original: FrozenPosterior
    losses: list[float] = field(default_factory=list)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    method: str = "rkl"
    loss_options: dict[str, Any] = field(default_factory=dict)
    lam: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    solver: str = "sgd"
    particles: str = "vectorized"
    collapsed: bool = False
    likelihood: str = ""

    @property
    def ess(self) -> list[float]:
        """The effective sample size of every step (``diagnostics["ess"]``; empty when the loss
        reports none, as the EUBO)."""
        return self.diagnostics.get("ess", [])

    @property
    def num_steps(self) -> int:
        """The number of steps taken (SVI steps, or moment-matching steps of the natural
        solver, which has no loss to record)."""
        if self.losses:
            return len(self.losses)
        return max((len(values) for values in self.diagnostics.values()), default=0)
