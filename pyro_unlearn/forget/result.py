"""What :func:`~pyro_unlearn.forget` returns: the unlearned posterior and the run's record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
        seconds: wall time of the optimisation (freezing the result is not counted).
        converged: whether the convergence rule stopped the run before ``num_steps``.
        particles: how the loss drew its particles (:attr:`UnlearningLoss.particles
            <pyro_unlearn.infer.base.UnlearningLoss>`): ``"vectorized"``, ``"vmap"`` (a model
            that cannot take a particle plate, batched by ``torch.func.vmap``) or
            ``"sequential"``.

    Example:
        >>> result = ForgetResult(guide=print, posterior=None, original=None, losses=[2.0, 1.0],
        ...                       diagnostics={"ess": [60.0, 50.0]})
        >>> result.num_steps, result.ess
        (2, [60.0, 50.0])
    """

    guide: Callable
    posterior: FrozenPosterior
    original: FrozenPosterior
    losses: list[float] = field(default_factory=list)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)
    particles: str = "vectorized"

    @property
    def ess(self) -> list[float]:
        """The effective sample size of every step (``diagnostics["ess"]``; empty when the loss
        reports none, as the EUBO)."""
        return self.diagnostics.get("ess", [])

    @property
    def num_steps(self) -> int:
        """The number of SVI steps taken."""
        return len(self.losses)
