"""One call that unlearns: runs the SVI loop with a progress bar until the loss has converged."""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI
from pyro.infer.util import is_validation_enabled
from tqdm import tqdm

from .handlers import ERASED, unlearn
from .infer import ReverseKL, Trace_EUBO, UnlearningLoss
from .infer.adjusted_likelihood import check_lam
from .params import ParamSnapshot
from .posterior import FrozenPosterior, freeze
from .results import UnlearningResult
from .traces import preserved_rng
from .validation import check_finite_data, check_positive, check_positive_int

__all__ = [
    "METHODS",
    "ForgetResult",
    "check_erased_rows",
    "forget",
    "has_converged",
    "loss_option_names",
    "run_until_flat",
]

#: The losses :func:`forget` runs, by the name its ``method`` argument takes.
METHODS: dict[str, type[UnlearningLoss]] = {"eubo": Trace_EUBO, "rkl": ReverseKL}


@dataclass(kw_only=True)
class ForgetResult(UnlearningResult):
    """What :func:`forget` returns.

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

    @property
    def ess(self) -> list[float]:
        """The effective sample size of every step (``diagnostics["ess"]``; empty when the loss
        reports none, as the EUBO)."""
        return self.diagnostics.get("ess", [])

    @property
    def num_steps(self) -> int:
        """The number of SVI steps taken."""
        return len(self.losses)


def has_converged(losses: list[float], window: int) -> bool:
    r"""The convergence rule of :func:`forget` and :func:`~pyro_unlearn.retrain`: the loss is
    flat up to its noise.

    With m₁, m₂ the mean losses of the last ``window`` steps and of the ``window`` before, and
    s₁², s₂² their variances, the run has converged when

    .. math:: m_2 - m_1 \le 2 \sqrt{(s_1^2 + s_2^2) / \mathrm{window}},

    i.e. the last window is no lower than the one before by more than two standard errors.

    Arguments:
        losses: the loss of every step so far.
        window: steps per window.

    Returns:
        ``False`` while fewer than ``2 * window`` losses are known.

    Example:
        >>> has_converged([5.0 - 0.01 * i for i in range(200)], window=50)  # still falling
        False
        >>> has_converged([1.0 + 0.1 * (-1) ** i for i in range(200)], window=50)  # noise
        True
    """
    if len(losses) < 2 * window:
        return False
    last = torch.tensor(losses[-window:], dtype=torch.float64)
    before = torch.tensor(losses[-2 * window : -window], dtype=torch.float64)
    stderr = torch.sqrt((last.var() + before.var()) / window)
    return bool(before.mean() - last.mean() <= 2 * stderr)


def run_until_flat(
    step: Callable[[], float],
    num_steps: int,
    window: int,
    desc: str,
    progress: bool,
    ready: Callable[[], bool] | None = None,
) -> tuple[list[float], bool, float]:
    """Call ``step`` up to ``num_steps`` times under a tqdm bar, stopping once the loss is flat.

    The loop of :func:`forget` and :func:`~pyro_unlearn.retrain`: at the end of every
    ``window`` steps, stop if ``ready()`` (when given; e.g. an annealed loss is not its
    objective before its temperature reaches 1) and :func:`has_converged`.

    Arguments:
        step: one optimisation step (e.g. ``svi.step``), returning its loss.
        num_steps: the most steps to take.
        window: steps per convergence window.
        desc: the progress bar's label.
        progress: whether to show the bar.
        ready: an extra condition for stopping, checked with the rule.

    Returns:
        ``(losses, converged, seconds)``: the loss of every step, whether the rule stopped the
        run, and its wall time.

    Example:
        >>> losses = iter([3.0, 2.0] + [1.0] * 100)
        >>> trace, converged, _ = run_until_flat(lambda: next(losses), 100, 10, "", False)
        >>> converged, len(trace)
        (True, 20)
    """
    losses: list[float] = []
    converged = False
    start = time.perf_counter()
    with tqdm(total=num_steps, desc=desc, disable=not progress) as bar:
        for _ in range(num_steps):
            losses.append(step())
            bar.update()
            if len(losses) % window == 0:  # not bar.n: a disabled bar does not count
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
                if (ready is None or ready()) and has_converged(losses, window):
                    converged = True
                    break
    return losses, converged, time.perf_counter() - start


def forget(
    model: Callable,
    guide: Callable,
    *args,
    erased: Any = None,
    plate: str | None = None,
    method: str = "rkl",
    lam: float = 0.0,
    posterior: FrozenPosterior | None = None,
    num_particles: int = 64,
    vectorize_particles: bool = True,
    max_plate_nesting: float = float("inf"),
    optim: pyro.optim.PyroOptim | None = None,
    lr: float = 0.01,
    num_steps: int = 2000,
    window: int = 100,
    progress: bool = True,
    loss_options: dict[str, Any] | None = None,
    **kwargs,
) -> ForgetResult:
    """Unlearn the erased data from a trained guide without retraining.

    Freezes ``guide`` as q(θ|D) (or uses ``posterior``, writing it back into ``guide`` first: the
    lazy way to serve a new request from the original posterior), then runs SVI with the loss
    ``method`` names on ``unlearn(model, erased=..., plate=...)`` for at most ``num_steps``
    steps, stopping once the loss is flat (:func:`has_converged` over ``window`` steps) and,
    for an annealed loss, its ``"temperature"`` diagnostic has reached 1. Every diagnostic the
    loss reports (``loss.diagnostics()``) is recorded per step.

    Validate, then act: every argument is checked first (the options' types and ranges, the
    data's finiteness, the erased rows against their plate in one dry run of the model, and
    ``posterior`` against ``guide``: parameter and site names and shapes), before the guide is
    touched. The run itself is all or nothing: a step whose loss is not finite, or that leaves a
    guide parameter non-finite, raises a ``ValueError`` naming the cause, and the param store
    (so the live guide) is then as it was before the call.

    Arguments:
        model: the model, as trained (not yet wrapped by :func:`~pyro_unlearn.unlearn`).
        guide: the trained guide; trained in place.
        args: the model's and guide's arguments: the erased data alone (``erased=None``) or the
            full data with ``erased`` rows of ``plate``.
        erased: the erased rows, as :func:`~pyro_unlearn.unlearn` takes them.
        plate: the plate the rows index.
        method: ``"rkl"`` (:class:`~pyro_unlearn.ReverseKL`, the robust default) or ``"eubo"``
            (:class:`~pyro_unlearn.Trace_EUBO`); the keys of :data:`METHODS`.
        lam: the adjusted likelihood's λ ∈ [0, 1].
        posterior: the frozen q(θ|D) to start from (default: ``freeze(guide, *args)``); it
            must have the guide's structure.
        num_particles: draws of θ per step, a positive integer.
        vectorize_particles: draw them in one vectorised plate.
        max_plate_nesting: as in Pyro's losses.
        optim: a Pyro optimiser (default: ClippedAdam, ``lr`` decaying tenfold over
            ``num_steps``).
        lr: the default optimiser's learning rate, > 0.
        num_steps: the most SVI steps, a positive integer.
        window: steps per convergence window, a positive integer.
        progress: show a progress bar.
        loss_options: more arguments of the loss (:func:`loss_option_names`), e.g.
            ``{"proposal": "current", "anneal": 0.8}`` for the rKL on an erasure too informative
            for q(θ|D).
        kwargs: more keyword arguments of the model and guide.

    Returns:
        A :class:`ForgetResult`: ``posterior`` the unlearned posterior (frozen), ``original``
        q(θ|D), the losses and diagnostics of every step.

    Raises:
        TypeError: for an option of the wrong type (a string λ, a fractional ``num_steps``...).
        ValueError: for an option out of range, non-finite data (naming the argument and row),
            bad erased rows or plate, a ``posterior`` of another structure than ``guide``, or a
            run that diverged.
        IndexError: for an erased index out of range of its plate.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example (``tests/test_forget.py`` runs it)::

        result = forget(model, guide, x, y, erased=idx, plate="data", method="rkl")
        result.posterior, result.seconds, result.ess[-1]
        later = forget(model, guide, x, y, erased=other, plate="data", posterior=result.original)
    """
    _check_options(method, lam, num_particles, num_steps, window, lr, optim, loss_options)
    check_finite_data(args, kwargs)
    wrapped = unlearn(model, erased=erased, plate=plate)
    check_erased_rows(wrapped, *args, **kwargs)
    restore = posterior is not None
    if posterior is None:
        posterior = freeze(guide, *args, **kwargs)
    elif not isinstance(posterior, FrozenPosterior):
        raise TypeError(
            "posterior must be a FrozenPosterior (pu.freeze(guide)), got "
            f"{type(posterior).__name__}"
        )
    else:
        posterior.check_guide(guide)
    loss = METHODS[method](
        posterior,
        lam,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        max_plate_nesting=max_plate_nesting,
        **(loss_options or {}),
    )
    if optim is None:
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / num_steps)})
    # Everything is checked; now act, all or nothing: a failed run leaves the store as it was.
    with ParamSnapshot.transaction():
        if restore:
            posterior.restore(guide)
        svi = SVI(wrapped, guide, optim, loss)
        step, diagnostics = _recording_step(svi, loss, args, kwargs)
        losses, converged, seconds = run_until_flat(
            step,
            num_steps,
            window,
            f"unlearning ({method}, λ={float(lam):g})",
            progress,
            lambda: diagnostics.get("temperature", [1.0])[-1] >= 1.0,
        )
        _check_trained_finite(optim, len(losses))
        unlearned = freeze(guide, *args, **kwargs)
    return ForgetResult(
        guide=guide,
        posterior=unlearned,
        original=posterior,
        losses=losses,
        diagnostics=diagnostics,
        seconds=seconds,
        converged=converged,
    )


def _check_options(method, lam, num_particles, num_steps, window, lr, optim, loss_options) -> None:
    """The argument checks of :func:`forget` that need neither the model nor the guide."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    check_lam(lam)
    check_positive_int("num_particles", num_particles)
    check_positive_int("num_steps", num_steps)
    check_positive_int("window", window)
    check_positive("lr", lr)
    if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(
            f"optim must be a Pyro optimiser (e.g. pyro.optim.Adam({{'lr': 1e-3}})) or None, "
            f"got {type(optim).__name__}"
        )
    if loss_options is None:
        return
    if not isinstance(loss_options, Mapping):
        raise TypeError(f"loss_options must be a dict, got {type(loss_options).__name__}")
    taken = sorted(set(loss_options) & _SET_BY_FORGET)
    if taken:
        raise ValueError(f"loss_options sets {taken}: pass them to forget itself")
    known = loss_option_names(METHODS[method])
    unknown = sorted(set(loss_options) - known, key=str)
    if unknown:
        raise ValueError(
            f"loss_options has unknown option(s) {unknown} for method={method!r}; "
            f"it takes {sorted(known)}"
        )


#: Arguments of the loss that forget sets from its own arguments.
_SET_BY_FORGET = {"posterior", "lam", "num_particles", "vectorize_particles", "max_plate_nesting"}


def loss_option_names(loss_cls: type[UnlearningLoss]) -> set[str]:
    """The keyword arguments of an unlearning loss that :func:`forget` passes on through its
    ``loss_options`` (those it does not set itself).

    Arguments:
        loss_cls: a subclass of :class:`~pyro_unlearn.infer.UnlearningLoss`.

    Returns:
        The option names.

    Example:
        >>> sorted(loss_option_names(ReverseKL))
        ['anneal', 'proposal', 'retain_graph']
    """
    names: set[str] = set()
    for cls in loss_cls.__mro__:
        if "__init__" in vars(cls) and issubclass(cls, UnlearningLoss):
            names |= {
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            }
    return names - _SET_BY_FORGET - {"self"}


def check_erased_rows(wrapped: Callable, *args, **kwargs) -> None:
    """Run a model wrapped by :func:`~pyro_unlearn.unlearn` once, against a private view of the
    param store and without gradients, so that what only the model can tell is checked before
    anything is written: the erased rows are in range of their plate, the plate and the named
    sites exist, and some observation is flagged.

    Arguments:
        wrapped: ``unlearn(model, erased=..., plate=...)``.
        *args, **kwargs: the model's arguments.

    Raises:
        IndexError: for an erased index out of range of its plate.
        ValueError: for an unknown plate or site, a mask of the wrong length, or a model in
            which nothing is erased.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro_unlearn import unlearn
        >>> def model(y):
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)
        >>> check_erased_rows(unlearn(model, erased=[5], plate="data"), torch.zeros(3))
        Traceback (most recent call last):
        ...
        IndexError: erased index 5 is out of range for plate 'data' of size 3
    """
    with preserved_rng(args, kwargs), ParamSnapshot.of_store(clone=False).active():
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(wrapped).get_trace(*args, **kwargs)
    flagged = [n for n, site in trace.nodes.items() if ERASED in site.get("infer", {})]
    if not flagged:
        raise ValueError(
            "the model has no erased observations: the erased data must be observed sites "
            "(pyro.sample(..., obs=...)) of the model, inside the named plate"
        )


def _check_trained_finite(optim: pyro.optim.PyroOptim, steps: int) -> None:
    """Raise naming the first parameter the optimiser trains that holds NaN or ±inf."""
    store = pyro.get_param_store()
    for param in getattr(optim, "optim_objs", {}):
        if not bool(torch.isfinite(param).all()):
            raise ValueError(
                f"the guide's parameter {store.param_name(param)!r} became non-finite by step "
                f"{steps}: the optimisation diverged; try a smaller lr (the guide is left as it "
                "was)"
            )


def _recording_step(
    svi: SVI, loss: UnlearningLoss, args: tuple, kwargs: dict
) -> tuple[Callable[[], float], dict[str, list[float]]]:
    """One SVI step that appends the loss's diagnostics to a record, and that record. A
    non-finite loss raises a ``ValueError`` naming its cause (diverged parameters, or a target
    that is not normalisable) instead of Pyro's warning."""
    record: dict[str, list[float]] = {}
    count = [0]

    def step() -> float:
        count[0] += 1
        try:
            with warnings.catch_warnings():  # Pyro's NaN/inf warning: the error below says more
                warnings.filterwarnings("ignore", message="Encountered", category=UserWarning)
                value = svi.step(*args, **kwargs)
        except (ValueError, RuntimeError) as error:  # e.g. a distribution's own validation
            _check_trained_finite(svi.optim, count[0] - 1)
            if count[0] == 1:  # nothing was trained yet: the model's or guide's own error
                raise
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise ValueError(
                f"step {count[0]} failed after the optimiser had moved the guide "
                f"({type(error).__name__}: {first_line}): the optimisation diverged; try a "
                "smaller lr (the guide is left as it was)"
            ) from error
        if is_validation_enabled():  # costs a sync per step; once at the end otherwise
            _check_trained_finite(svi.optim, count[0])
        if not math.isfinite(value):
            raise ValueError(
                f"the unlearning loss is {value} at step {count[0]}: the target "
                "q(θ|D)/p_adj(D_e|θ) may not be normalisable here (erased data too informative "
                "for q(θ|D)); try a larger lam, ReverseKL, more particles or a smaller lr (the "
                "guide is left as it was)"
            )
        for name, diagnostic in loss.diagnostics().items():
            record.setdefault(name, []).append(diagnostic)
        return value

    return step, record
