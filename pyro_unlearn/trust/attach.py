"""The trust check every unlearning method runs on its result: diagnose, judge, cap, attach."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..posterior import FrozenPosterior, freeze
from ..results import UnlearningResult
from ..traces import preserved_rng
from ..validation import check_positive_int
from .diagnostics import MIN_SAMPLES, TrustDiagnostics, diagnose
from .draws import diagnose_draws
from .verdicts import Caveats, cap_verdict, verdict, weighted_verdict

__all__ = ["DIAGNOSABLE_ERRORS", "attach_draws_trust", "attach_trust", "check_diagnose_options"]

#: The errors that leave a result undiagnosed (verdict ``None``, the reason in its explanation)
#: rather than failing the call: a model the diagnostics cannot take, a non-finite target...
DIAGNOSABLE_ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError)


def check_diagnose_options(diagnose: Any, diagnose_samples: Any = MIN_SAMPLES) -> int:
    """Check the ``diagnose`` and ``diagnose_samples`` options of an unlearning method, before
    it acts.

    Arguments:
        diagnose: whether to attach the trust check: ``True`` or ``False``.
        diagnose_samples: draws from each posterior, an integer ≥ :data:`MIN_SAMPLES`.

    Returns:
        ``diagnose_samples`` as an int.

    Raises:
        TypeError: for a ``diagnose`` that is not a bool, or a ``diagnose_samples`` that is not
            an integer.
        ValueError: for ``diagnose_samples`` below :data:`MIN_SAMPLES`.

    Example:
        >>> check_diagnose_options(True, 50)
        Traceback (most recent call last):
        ...
        ValueError: diagnose_samples must be at least 100, got 50
    """
    if not isinstance(diagnose, bool):
        raise TypeError(f"diagnose must be True or False, got {type(diagnose).__name__}")
    samples = check_positive_int("diagnose_samples", diagnose_samples)
    if samples < MIN_SAMPLES:
        raise ValueError(f"diagnose_samples must be at least {MIN_SAMPLES}, got {samples}")
    return samples


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _judge(
    result: UnlearningResult,
    trust: TrustDiagnostics,
    judged: tuple[str, str],
    caveats: Caveats | Callable[[TrustDiagnostics], Caveats] | None,
) -> None:
    if callable(caveats):
        caveats = caveats(trust)
    caveats = Caveats() if caveats is None else caveats
    label, explanation = cap_verdict(judged, caveats)
    result.trust, result.verdict, result.explanation = trust, label, explanation


def attach_trust(
    result: UnlearningResult,
    model: Callable[..., Any],
    original: Callable[..., Any] | FrozenPosterior,
    args: tuple,
    kwargs: Mapping[str, Any],
    *,
    erased: Any = None,
    plate: Any = None,
    lam: float = 0.0,
    num_samples: int = 1000,
    curvature: str | None = None,
    vmap: bool = False,
    caveats: Caveats | Callable[[TrustDiagnostics], Caveats] | None = None,
) -> UnlearningResult:
    r"""Diagnose ``result.posterior`` against p̃(θ) ∝ q(θ|D)/p_adj(D_e|θ; λ) and write the
    diagnostics, the verdict and its explanation into ``result``.

    :func:`~pyro_unlearn.trust.diagnose` scores the unlearned posterior,
    :func:`~pyro_unlearn.trust.verdict` judges it, and :func:`~pyro_unlearn.trust.cap_verdict`
    holds the verdict to what the method vouches for (``caveats``). A model the diagnostics
    cannot take (one that cannot take a particle plate, a non-finite target: any of
    :data:`DIAGNOSABLE_ERRORS`) leaves the unlearning as it is: ``verdict`` ``None`` and the
    reason in ``explanation``. The caller's random stream is left as it was.

    Arguments:
        result: the method's result, holding the unlearned ``posterior`` (frozen).
        model: the Pyro model.
        original: q(θ|D): frozen, or the live guide (frozen here with ``args``).
        args, kwargs: the model's arguments, as the method took them.
        erased, plate, lam, num_samples, curvature, vmap: as :func:`~pyro_unlearn.trust.diagnose`
            takes them.
        caveats: the method's :class:`~pyro_unlearn.trust.Caveats`, or a function of the
            diagnostics that returns them (``None``: none).

    Returns:
        ``result``, judged.

    Example (``tests/infer/test_laplace.py`` runs it)::

        result = laplace_unlearn(model, guide, x, y, erased=rows, plate="data", diagnose=False)
        attach_trust(result, model, guide, (x, y), {}, erased=rows, plate="data")
        result.verdict, result.summary()
    """
    try:
        if not isinstance(original, FrozenPosterior):
            with preserved_rng(args, kwargs):  # the caller's random stream is left alone
                original = freeze(original, *args, **kwargs)
        trust = diagnose(
            model,
            result.posterior,
            original,
            *args,
            erased=erased,
            plate=plate,
            lam=lam,
            num_samples=num_samples,
            curvature=curvature,
            vmap=vmap,
            **kwargs,
        )
    except DIAGNOSABLE_ERRORS as error:
        result.explanation = f"not diagnosed: {_first_line(error)}"
        return result
    _judge(result, trust, verdict(trust), caveats)
    return result


def attach_draws_trust(
    result: UnlearningResult,
    log_likelihood: torch.Tensor,
    *,
    lam: float = 0.0,
    caveats: Caveats | Callable[[TrustDiagnostics], Caveats] | None = None,
) -> UnlearningResult:
    """Diagnose weighted draws by their weights 1/p_adj(D_e|θ_s)
    (:func:`~pyro_unlearn.trust.diagnose_draws`), judge them
    (:func:`~pyro_unlearn.trust.weighted_verdict`, capped by ``caveats``) and write it all into
    ``result``; fewer than :data:`MIN_SAMPLES` draws leave ``verdict`` ``None`` with the reason.

    Arguments:
        result: the method's result.
        log_likelihood: log p_adj(D_e|θ_s) of every input draw, ``(S,)``.
        lam: the λ the likelihood was adjusted with.
        caveats: as :func:`attach_trust` takes them.

    Returns:
        ``result``, judged.

    Example:
        >>> from pyro_unlearn.results import UnlearningResult
        >>> theta = torch.randn(4000, generator=torch.Generator().manual_seed(0)) / 11**0.5
        >>> attach_draws_trust(UnlearningResult(), -0.5 * (0.5 - theta) ** 2).verdict
        'trusted'
        >>> print(attach_draws_trust(UnlearningResult(), theta[:10]).summary())
        not diagnosed: PSIS needs at least 100 draws to fit the weights' tail, got 10
    """
    try:
        trust = diagnose_draws(log_likelihood, lam=lam)
    except DIAGNOSABLE_ERRORS as error:
        result.explanation = f"not diagnosed: {_first_line(error)}"
        return result
    _judge(result, trust, weighted_verdict(trust), caveats)
    return result
