"""The face every unlearning method's result shares: the unlearned posterior, the time it took
and whether the method vouches for it."""

from __future__ import annotations

from dataclasses import dataclass

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

    Attributes:
        seconds: wall time of the method.
        converged: whether the method's own stopping rule was met (a convergence test, a
            tolerance); ``False`` means the result is what the step budget left.

    Example:
        >>> UnlearningResult(seconds=1.5, converged=True)
        UnlearningResult(seconds=1.5, converged=True)
    """

    seconds: float = 0.0
    converged: bool = False
