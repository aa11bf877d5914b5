"""The reference every unlearning result is judged against: VI retrained on D_r, timed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuide

from .forget import run_until_flat
from .posterior import FrozenPosterior, _param_store_swapped, freeze, independent_copy

__all__ = ["RetrainResult", "retrain"]


@dataclass
class RetrainResult:
    """What :func:`retrain` returns.

    Attributes:
        posterior: q(θ|D_r), frozen (its own tensors; compare it with any other posterior).
        losses: the ELBO loss of every step.
        seconds: wall time of the optimisation.
        converged: whether the convergence rule stopped the run before ``num_steps``.
    """

    posterior: FrozenPosterior
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = False


def retrain(
    model: Callable,
    guide: Callable,
    *args,
    init: str = "posterior",
    num_steps: int = 5000,
    window: int = 200,
    lr: float = 0.01,
    num_particles: int = 16,
    optim: pyro.optim.PyroOptim | None = None,
    progress: bool = True,
    **kwargs,
) -> RetrainResult:
    """Fit q(θ|D_r) by Trace_ELBO on the remaining data, without touching ``guide``.

    Trains an independent copy of ``guide`` in an empty param store, so the live guide, its
    parameters and anything frozen from it are left as they are. ``init="posterior"`` starts
    from the guide's current values, q(θ|D) (the Variational Bayesian Unlearning authors'
    choice); ``init="prior"`` re-initialises an AutoGuide as when it was built (its
    ``init_loc_fn``). Stops at ``num_steps`` or once the loss is flat
    (:func:`~pyro_unlearn.forget.has_converged` over ``window`` steps, the rule :func:`forget`
    uses), so retraining and unlearning times compare like for like. ``*args, **kwargs`` are
    D_r, as the model takes it. The default optimiser is ClippedAdam, ``lr`` decaying tenfold
    over ``num_steps``.

    Example (``tests/test_retrain.py`` runs it)::

        reference = retrain(model, guide, x[keep], y[keep])
        reference.posterior, reference.seconds, reference.converged
    """
    if init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    if not isinstance(guide, pyro.nn.PyroModule):
        raise TypeError(
            f"retrain needs a PyroModule guide (e.g. an AutoGuide), got {type(guide).__name__}"
        )
    work = independent_copy(guide)
    if init == "prior":
        if not isinstance(work, AutoGuide):
            raise TypeError("init='prior' re-initialises AutoGuides only")
        work.prototype_trace = None  # the next call runs _setup_prototype: fresh parameters
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / max(num_steps, 1))})
    loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
    with _param_store_swapped({}, {}):  # the copy registers its own tensors here
        svi = SVI(model, work, optim, loss)
        losses, converged, seconds = run_until_flat(
            lambda: svi.step(*args, **kwargs),
            num_steps,
            window,
            f"retraining on D_r (from the {init})",
            progress,
        )
        posterior = freeze(work, *args, **kwargs)
    return RetrainResult(posterior, losses, seconds, converged)
