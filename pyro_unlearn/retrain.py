"""The reference every unlearning result is judged against: VI retrained on D_r, timed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
from pyro.infer import SVI
from pyro.infer.autoguide import AutoGuide

from .forget import run_until_flat
from .infer.particle_paths import elbo_particles
from .params import ParamSnapshot, trainable
from .posterior import FrozenPosterior, freeze, independent_copy
from .posterior.checks import check_guide_arguments
from .results import UnlearningResult
from .traces import preserved_rng
from .validation import check_finite_data, check_positive, check_positive_int

__all__ = ["RetrainResult", "retrain"]

_REFERENCE = "not judged: retrained on D_r, the reference the unlearning verdicts stand in for"


@dataclass(kw_only=True)
class RetrainResult(UnlearningResult):
    """What :func:`retrain` returns.

    Attributes:
        posterior: q(θ|D_r), frozen (its own tensors; compare it with any other posterior).
        losses: the ELBO loss of every step.
        seconds: wall time of the optimisation.
        converged: whether the convergence rule stopped the run before ``num_steps``.
        particles: how the ELBO's particles were drawn: ``"vectorized"`` (a particle plate),
            ``"vmap"`` (``torch.func.vmap`` over a model that cannot take the plate) or
            ``"sequential"`` (one at a time).
        verdict: always ``None``: retraining is the reference the verdicts of the unlearning
            methods stand in for, not a result judged against q(θ|D)/p(D_e|θ) (it never sees
            D_e). ``trust`` is ``None`` too, and ``explanation`` (``summary()``) says so, with
            whether the run converged.

    Example:
        >>> result = RetrainResult(posterior=None, converged=True, losses=[3.0, 2.0])
        >>> result.verdict, result.summary()
        (None, 'not judged: retrained on D_r, the reference the unlearning verdicts stand in for')
    """

    posterior: FrozenPosterior
    losses: list[float] = field(default_factory=list)
    particles: str = "vectorized"
    explanation: str = _REFERENCE


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

    Trains an independent copy of ``guide`` in a private param store
    (:class:`~pyro_unlearn.params.ParamSnapshot`), so the live guide, its parameters and anything
    frozen from it are left as they are. A ``PyroModule`` guide is deep-copied; a plain guide
    function's parameters (``pyro.param``) are copied into the private store. The model's own
    parameters (e.g. an empirical-Bayes prior scale ``pyro.param("prior_scale", ...)``) are
    copied in too and held fixed at their trained values, as the unlearning losses hold them, so
    the reference and the unlearned posterior target the same q(θ|D_r). The guide's parameters
    are trained even if they were frozen (``guide.requires_grad_(False)``). Stops at
    ``num_steps`` or once the loss is flat (:func:`~pyro_unlearn.forget.has_converged` over
    ``window`` steps, the rule :func:`~pyro_unlearn.forget` uses), so retraining and unlearning
    times compare like for like.

    Arguments:
        model: the Pyro model.
        guide: the guide trained on D: a ``PyroModule`` guide (e.g. an AutoGuide) or a guide
            function using ``pyro.param``.
        *args, **kwargs: D_r, as the model (and the guide) takes it.
        init: ``"posterior"`` starts from the guide's current values, q(θ|D) (the choice of
            Nguyen et al.); ``"prior"`` re-initialises an AutoGuide as when it was built (its
            ``init_loc_fn``), or a guide function at its ``pyro.param`` initial values.
        num_steps: the most SVI steps.
        window: the steps over which the loss must be flat to stop early.
        lr: the default optimiser's learning rate (ClippedAdam, decaying tenfold over
            ``num_steps``).
        num_particles: Trace_ELBO's particles: vectorised in a plate when the model takes one,
            else by ``torch.func.vmap`` over the model, else one at a time
            (:attr:`RetrainResult.particles`).
        optim: an optimiser instead of the default.
        progress: show a progress bar.

    Returns:
        A :class:`RetrainResult`: the frozen ``posterior`` q(θ|D_r), the ``losses``,
        ``seconds`` and whether the run ``converged``; its ``verdict`` is ``None`` (retraining
        is the reference) and ``summary()`` says so.

    Raises:
        TypeError: for a guide that is neither a ``PyroModule`` nor a function reading
            ``pyro.param``s, a guide function not given its arguments, ``init="prior"`` for a
            ``PyroModule`` guide that is not an AutoGuide, or an option of the wrong type.
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
    _check_guide(guide, init, args, kwargs)
    for name, value in (("num_steps", num_steps), ("window", window)):
        check_positive_int(name, value)
    num_particles = check_positive_int("num_particles", num_particles)
    check_positive("lr", lr)
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(f"optim must be a Pyro optimiser or None, got {type(optim).__name__}")
    check_finite_data(args, kwargs)
    work, store = _private_start(model, guide, init, args, kwargs)
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / max(num_steps, 1))})
    # A private store: the model's parameters (held fixed) and a plain guide's start; a module
    # copy registers its own tensors. Frozen guide parameters are made trainable in there.
    with store.active(), trainable(work, *args, **kwargs):
        fitted, loss, particles = elbo_particles(
            poutine.block(model, hide_types=["param"]), work, args, kwargs, num_particles
        )
        svi = SVI(fitted, work, optim, loss)
        losses, converged, seconds = run_until_flat(
            lambda: svi.step(*args, **kwargs),
            num_steps,
            window,
            f"retraining on D_r (from the {init})",
            progress,
        )
        posterior = freeze(work, *args, **kwargs)
    return RetrainResult(
        posterior=posterior,
        losses=losses,
        seconds=seconds,
        converged=converged,
        particles=particles,
        explanation=f"{_REFERENCE}; "
        + (
            f"converged after {len(losses)} steps"
            if converged
            else f"not converged after {len(losses)} steps: the reference is still moving"
        ),
    )


def _check_guide(guide: Callable, init: str, args: tuple, kwargs: dict) -> None:
    """Raise unless ``guide`` is something retrain can copy and train with ``init``."""
    if isinstance(guide, pyro.nn.PyroModule):
        if init == "prior" and not isinstance(guide, AutoGuide):
            raise TypeError("init='prior' re-initialises AutoGuides (or guide functions) only")
        return
    if not callable(guide):
        raise TypeError(
            f"retrain needs a PyroModule guide (e.g. an AutoGuide) or a guide function using "
            f"pyro.param, got {type(guide).__name__}"
        )
    check_guide_arguments(guide, args, kwargs, "pu.retrain")
    with preserved_rng(args, kwargs):
        reads = ParamSnapshot.take(guide, *args, **kwargs)
    if not reads:
        raise TypeError(
            "retrain needs a PyroModule guide (e.g. an AutoGuide) or a guide function using "
            f"pyro.param; {getattr(guide, '__name__', type(guide).__name__)} reads no parameter"
        )


def _private_start(
    model: Callable, guide: Callable, init: str, args: tuple, kwargs: dict
) -> tuple[Callable, ParamSnapshot]:
    """The guide to train and the private store to train it in: the model's parameters (copies
    of their trained values, fixed), and a plain guide function's parameters (copies of q(θ|D)'s
    values for ``init="posterior"``; none for ``"prior"``: it registers its initial values)."""
    is_module = isinstance(guide, pyro.nn.PyroModule)
    with preserved_rng(args, kwargs):  # probes: a seeded run draws as without them
        if is_module:  # a copy registers its own tensors, in an empty store (not the live one's)
            start = ParamSnapshot()
            start.register(independent_copy(guide), *args, **kwargs)
        else:
            start = ParamSnapshot.take(guide, *args, **kwargs)
        model_params = ParamSnapshot.take(model, *args, **kwargs)
    store = model_params.select(n for n in model_params if n not in start)
    if is_module:
        work = independent_copy(guide)
        if init == "prior":
            work.prototype_trace = None  # the next call runs _setup_prototype: fresh parameters
        return work, store
    if init == "posterior":
        store.update(start.clone(requires_grad=True))
    return guide, store
