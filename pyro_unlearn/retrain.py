"""The reference every unlearning result is judged against: VI retrained on D_r, timed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuide

from .forget import run_until_flat
from .params import ParamSnapshot
from .posterior import FrozenPosterior, freeze, independent_copy
from .results import UnlearningResult
from .validation import check_finite_data, check_positive, check_positive_int

__all__ = ["RetrainResult", "retrain"]


@dataclass(kw_only=True)
class RetrainResult(UnlearningResult):
    """What :func:`retrain` returns.

    Attributes:
        posterior: q(θ|D_r), frozen (its own tensors; compare it with any other posterior).
        losses: the ELBO loss of every step.
        seconds: wall time of the optimisation.
        converged: whether the convergence rule stopped the run before ``num_steps``.
    """

    posterior: FrozenPosterior
    losses: list[float] = field(default_factory=list)


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
    r"""Fit q(θ|D_r) by Trace_ELBO on the remaining data, without touching ``guide``.

    .. math:: q(θ|D_r) = \arg\max_q \; E_q[\log p(D_r|θ) + \log p(θ) − \log q(θ)].

    Trains an independent copy of ``guide`` in a private, empty param store
    (:class:`~pyro_unlearn.params.ParamSnapshot`), so the live guide, its parameters and anything
    frozen from it are left as they are. Stops at ``num_steps`` or once the loss is flat
    (:func:`~pyro_unlearn.forget.has_converged` over ``window`` steps, the rule
    :func:`~pyro_unlearn.forget` uses), so retraining and unlearning times compare like for like.

    Arguments:
        model: the Pyro model.
        guide: a ``PyroModule`` guide trained on D (e.g. an AutoGuide).
        *args, **kwargs: D_r, as the model takes it.
        init: ``"posterior"`` starts from the guide's current values, q(θ|D) (the choice of
            Nguyen et al.); ``"prior"`` re-initialises an AutoGuide as when it was built (its
            ``init_loc_fn``).
        num_steps: the most SVI steps.
        window: the steps over which the loss must be flat to stop early.
        lr: the default optimiser's learning rate (ClippedAdam, decaying tenfold over
            ``num_steps``).
        num_particles: Trace_ELBO's particles (vectorised).
        optim: an optimiser instead of the default.
        progress: show a progress bar.

    Returns:
        A :class:`RetrainResult`: the frozen ``posterior`` q(θ|D_r), the ``losses``,
        ``seconds`` and whether the run ``converged``.

    Raises:
        TypeError: for a guide that is not a ``PyroModule`` or an option of the wrong type.
        ValueError: for an option out of range or non-finite data (naming the argument and
            its first non-finite row), before anything runs.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        reference = retrain(model, guide, x[keep], y[keep])
        reference.posterior, reference.seconds, reference.converged
    """
    if not isinstance(init, str) or init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    if not isinstance(guide, pyro.nn.PyroModule):
        raise TypeError(
            f"retrain needs a PyroModule guide (e.g. an AutoGuide), got {type(guide).__name__}"
        )
    for name, value in (("num_steps", num_steps), ("window", window)):
        check_positive_int(name, value)
    num_particles = check_positive_int("num_particles", num_particles)
    check_positive("lr", lr)
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(f"optim must be a Pyro optimiser or None, got {type(optim).__name__}")
    check_finite_data(args, kwargs)
    work = independent_copy(guide)
    if init == "prior":
        if not isinstance(work, AutoGuide):
            raise TypeError("init='prior' re-initialises AutoGuides only")
        work.prototype_trace = None  # the next call runs _setup_prototype: fresh parameters
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / max(num_steps, 1))})
    loss = Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
    with ParamSnapshot().active():  # a private, empty store: the copy registers its own tensors
        svi = SVI(model, work, optim, loss)
        losses, converged, seconds = run_until_flat(
            lambda: svi.step(*args, **kwargs),
            num_steps,
            window,
            f"retraining on D_r (from the {init})",
            progress,
        )
        posterior = freeze(work, *args, **kwargs)
    return RetrainResult(posterior=posterior, losses=losses, seconds=seconds, converged=converged)
