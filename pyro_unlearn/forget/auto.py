"""``forget(method="auto")``: the runs it tries in turn, and how it keeps the best-diagnosed."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..trust import verdict
from .result import ForgetResult

__all__ = ["AUTO", "AUTO_LADDER", "Rung", "attempt_row", "nothing_kept", "rank", "should_escalate"]

#: The ``method`` of :func:`~pyro_unlearn.forget` that chooses the loss itself.
AUTO = "auto"


class Rung(NamedTuple):
    """One run ``method="auto"`` may try: a loss (a key of
    :data:`~pyro_unlearn.forget.methods.METHODS`), its options, and a label for the progress
    bar and the attempts table; ``mass`` sets λ to the share of q(θ|D)'s mass kept
    (:func:`~pyro_unlearn.infer.lam_for_mass`), ``None`` keeps the caller's λ."""

    method: str
    options: dict[str, Any]
    label: str
    mass: float | None = None


#: The runs of ``method="auto"``, in order, each from q(θ|D): the paper's reverse KL (θ_s ~
#: q(θ|D)); the reverse KL annealed from the current guide (θ_s ~ q_v, target tempered so half
#: the weights' ESS is kept), for erasures that move the posterior beyond q(θ|D)'s reach; the
#: EUBO, whose fit does not rest on importance weights; last, the annealed reverse KL with the
#: adjusted likelihood's λ raised to keep 90 % of q(θ|D)'s mass (skipped when the caller's λ is
#: larger): unlearning is then curbed in q(θ|D)'s 10 % tail, where VI is least reliable
#: (Nguyen et al. 2020, Sec. 3.3).
AUTO_LADDER: tuple[Rung, ...] = (
    Rung("rkl", {}, "reverse KL"),
    Rung("rkl", {"proposal": "current", "anneal": 0.5}, "annealed reverse KL"),
    Rung("eubo", {}, "EUBO"),
    Rung("rkl", {"proposal": "current", "anneal": 0.5}, "annealed reverse KL, mass 0.9", 0.9),
)

_VERDICT_RANK = {"trusted": 0, "approximate": 1, "retrain": 2}


def should_escalate(result: ForgetResult) -> bool:
    """Whether ``method="auto"`` tries the next run after ``result``: when it is not
    ``"trusted"``, or, undiagnosed (``verdict`` ``None``), when its weights collapsed. A
    converged, uncollapsed run that is ``"approximate"`` or ``"retrain"`` only because of
    q(θ|D)'s own check (:func:`~pyro_unlearn.trust.verdict`) ends the search: every run starts
    from the same q(θ|D), so none can earn more.

    Arguments:
        result: a run's result, diagnosed or not.

    Returns:
        ``True`` to try the next run.

    Example:
        >>> should_escalate(ForgetResult(guide=print, posterior=None, original=None))
        False
    """
    if result.verdict is None:
        return result.collapsed
    if result.verdict in ("approximate", "retrain") and result.trust is not None:
        capped_by_fit = result.converged and not result.collapsed
        if capped_by_fit and verdict(result.trust, check_fit=False).label == "trusted":
            return False
    return result.verdict != "trusted"


def rank(result: ForgetResult, lam: float) -> tuple[float, ...]:
    """The sort key of ``method="auto"``'s runs, best first: a trusted run, then a diagnosed
    one; then whether the diagnostics say the run moved towards the target p̃ at all
    (KL(q_u ‖ p̃) below q(θ|D)'s own KL(q(θ|D) ‖ p̃)); weights that did not collapse; the
    user's λ; a converged run; the verdict ("approximate" before "retrain"); last the share of
    the distance to p̃ left, KL(q_u ‖ p̃) / KL(q(θ|D) ‖ p̃).

    "approximate" and "retrain" are judged against each run's own target, and the last run
    changes λ: on the poisoned cluster of the tests, the run at the λ keeping 90 % of the mass
    (annealing unfinished, 77 % of its way to p̃ left) came out "approximate" by an update ESS
    of 1.1 % against the 1 % bar, where the EUBO at the user's λ had reached p̃ (the retrained
    posterior, exactly) and was "retrain" by that bar alone. Ranked by the verdict first, the
    guide held the former, 41 nats from the retrained posterior; among untrusted runs the
    verdict now comes after the user's λ and convergence.

    Among runs that all say "retrain" the second key decides what the guide holds. In the trust
    benchmark (``benchmarks/bench_trust.py``), of ten such cases the two kept runs that were
    further from the retrained posterior than q(θ|D) (a ``PyroModule[nn.Linear]`` cluster: the
    EUBO, 4.7·10⁴ nats against q(θ|D)'s 46; a BNN's random erasure: 0.26 against 0.019 per
    point on D_e) both had a KL estimate above q(θ|D)'s (shares 4·10¹⁶ and 2.3) and ranked
    first only for not collapsing; the five that clearly helped had shares below 0.01. Keeping
    q(θ|D) instead would have thrown those five away.

    Arguments:
        result: a run's result.
        lam: the λ the user asked for.

    Returns:
        A tuple; smaller is better.

    Example:
        >>> r = ForgetResult(guide=print, posterior=None, original=None, verdict="retrain")
        >>> rank(r, 0.0)[:6]  # not trusted, no evidence that it moved towards p̃
        (1, 1, 0, 0, 1, 2)
    """
    trust = result.trust
    share = math.inf
    if trust is not None and math.isfinite(trust.kl):
        share = trust.kl / max(trust.update_kl, 1e-12)
    verdict_rank = _VERDICT_RANK.get(result.verdict, 3)
    return (
        min(verdict_rank, 1) if result.verdict is not None else 2,
        int(not share < 1.0),
        int(result.collapsed),
        int(result.lam != float(lam)),
        int(not result.converged),
        verdict_rank,
        share,
    )


def nothing_kept(best: ForgetResult, original: Any, num_runs: int, lam: float) -> ForgetResult:
    """What ``method="auto"`` returns when every diagnosed run says "retrain" and none came
    closer to the target p̃ than q(θ|D) (KL(q_u ‖ p̃) at or above KL(q(θ|D) ‖ p̃)): q(θ|D) itself,
    left in the guide, with the verdict "retrain" and ``method="auto"``. Installing the best of
    those runs would put in the guide a posterior the diagnostics say is no nearer the target
    than doing nothing; in the trust benchmark (``benchmarks/bench_trust.py``) such a run, on a
    small BNN's random erasure, predicted D_e 13× worse than q(θ|D).

    Arguments:
        best: the best-ranked run (:func:`rank`).
        original: q(θ|D), frozen.
        num_runs: how many runs were tried.
        lam: the λ the caller asked for.

    Returns:
        A :class:`ForgetResult` whose ``posterior`` is ``original``.

    Example:
        >>> best = ForgetResult(guide=print, posterior=None, original="q", verdict="retrain")
        >>> kept = nothing_kept(best, "q", 4, 0.0)
        >>> kept.posterior, kept.method, kept.verdict, kept.converged
        ('q', 'auto', 'retrain', False)
    """
    kept = ForgetResult(
        guide=best.guide, posterior=original, original=original, method=AUTO, lam=float(lam),
        solver=best.solver, particles=best.particles,
    )  # fmt: skip
    kept.verdict = "retrain"
    kept.explanation = (
        f"retrain: none of the {num_runs} runs came closer to p̃ than q(θ|D), so the guide "
        f"holds q(θ|D) as before, nothing unlearned; the best run said {best.explanation}"
    )
    return kept


def attempt_row(
    rung: Rung, lam: float, result: ForgetResult | None, error: BaseException | None = None
) -> dict[str, Any]:
    """One row of ``ForgetResult.attempts``: the run's loss, options and λ, then its verdict,
    k̂, KL estimate, convergence, collapse, seconds and steps, or the error that ended it.

    Arguments:
        rung: the run tried.
        lam: its λ.
        result: its result, or ``None`` when it failed.
        error: the error it failed with.

    Returns:
        A dict (the key ``"run"`` holds the result until :func:`~pyro_unlearn.forget` has
        chosen, and is then replaced by ``"chosen"``).

    Example:
        >>> attempt_row(AUTO_LADDER[0], 0.0, None, ValueError("diverged"))["error"]
        'ValueError: diverged'
    """
    row: dict[str, Any] = {"method": rung.method, "label": rung.label, "loss_options": rung.options}
    row["lam"] = float(lam)
    if result is None:
        row.update(verdict=None, pareto_k=math.nan, kl=math.nan, converged=False)
        row.update(collapsed=False, seconds=math.nan, num_steps=0, solver=None, run=None)
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if error else ''}"
        return row
    trust = result.trust
    row.update(verdict=result.verdict, converged=result.converged, collapsed=result.collapsed)
    row["pareto_k"] = trust.pareto_k if trust is not None else math.nan
    row["kl"] = trust.kl if trust is not None else math.nan
    row.update(seconds=result.seconds, num_steps=result.num_steps, solver=result.solver)
    row.update(run=result, error=None)
    return row
