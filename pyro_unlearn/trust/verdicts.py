"""The verdict on an unlearned posterior: trusted, approximate, or retrain, and why."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from ..validation import check_in_unit_interval, check_positive_int
from .diagnostics import TrustDiagnostics

__all__ = [
    "GOOD_PARETO_K",
    "KL_FLOOR",
    "MAX_KL_SHARE",
    "MIN_UPDATE_ESS_FRACTION",
    "VERDICTS",
    "Caveats",
    "Verdict",
    "cap_verdict",
    "own_fit_caveat",
    "pareto_k_threshold",
    "verdict",
    "weighted_verdict",
]

#: The verdicts, from best to worst.
VERDICTS = ("trusted", "approximate", "retrain")
#: k̂ below it: the importance weights have finite variance, q_u is close to the target.
GOOD_PARETO_K = 0.5
#: Below this fraction of q(θ|D)'s draws, the update is too large for q(θ|D) to carry it.
MIN_UPDATE_ESS_FRACTION = 0.01
#: A trusted q_u has KL(q_u ‖ p̃) at most this share of KL(q(θ|D) ‖ p̃), the error of doing nothing,
MAX_KL_SHARE = 0.5
#: or at most this many nats (an update too small to halve measurably).
KL_FLOOR = 0.01


class Verdict(NamedTuple):
    """``label`` (one of :data:`VERDICTS`) and a one-line ``explanation`` quoting the evidence."""

    label: str
    explanation: str


class Caveats(NamedTuple):
    """What a method cannot vouch for, whatever the diagnostics say (:func:`cap_verdict`).

    Each entry is a short clause quoting its evidence, e.g. ``"θ* missed its tolerance after 20
    Newton steps"``.
    """

    #: reasons that make the verdict ``"retrain"`` (a result built on a repair).
    retrain: Sequence[str] = ()
    #: reasons that make a ``"trusted"`` verdict ``"approximate"`` (not converged, a
    #: first-order step on influential data).
    approximate: Sequence[str] = ()
    #: remarks appended to the explanation, leaving the label as it is.
    notes: Sequence[str] = ()


def cap_verdict(judged: Verdict, caveats: Caveats) -> Verdict:
    """The verdict no better than the method vouches for: ``"retrain"`` when ``caveats.retrain``
    holds a reason, at most ``"approximate"`` when ``caveats.approximate`` does, the notes
    appended; the diagnostics' own explanation is kept after the reasons.

    Arguments:
        judged: the diagnostics' verdict (:func:`verdict` or :func:`weighted_verdict`).
        caveats: the method's :class:`Caveats`.

    Returns:
        A :class:`Verdict`.

    Example:
        >>> judged = Verdict("trusted", "trusted: q_u matches p̃ (k̂ = 0.10)")
        >>> cap_verdict(judged, Caveats(approximate=["not converged"])).explanation
        'approximate: not converged; the diagnostics alone: trusted: q_u matches p̃ (k̂ = 0.10)'
        >>> cap_verdict(judged, Caveats(notes=["one note"])).explanation
        'trusted: q_u matches p̃ (k̂ = 0.10); one note'
    """
    label, explanation = judged
    for worse, reasons in (("retrain", caveats.retrain), ("approximate", caveats.approximate)):
        if reasons and VERDICTS.index(label) < VERDICTS.index(worse):
            label = worse
            explanation = f"{worse}: {'; '.join(reasons)}; the diagnostics alone: {explanation}"
        elif reasons:
            explanation = f"{explanation}; also {'; '.join(reasons)}"
    if caveats.notes:
        explanation = f"{explanation}; {'; '.join(caveats.notes)}"
    return Verdict(label, explanation)


def pareto_k_threshold(num_samples: int) -> float:
    """The k̂ above which PSIS is unreliable with S draws: min(1 − 1/log₁₀ S, 0.7).

    References:
        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

    Example:
        >>> pareto_k_threshold(1000), pareto_k_threshold(10_000)
        (0.6666666666666667, 0.7)
    """
    if check_positive_int("num_samples", num_samples) < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def verdict(
    diagnostics: TrustDiagnostics,
    *,
    min_update_ess_fraction: float = MIN_UPDATE_ESS_FRACTION,
    check_fit: bool = True,
) -> Verdict:
    r"""``"trusted"``, ``"approximate"`` or ``"retrain"``, with a one-line explanation.

    Two errors count (Nguyen et al. 2020): q_u's distance to the target p̃ ∝ q(θ|D)/p_adj(D_e|θ),
    and p̃'s own unreliability when the erased data move the posterior further than q(θ|D)
    reaches. With k̂ the PSIS shape of p̃/q_u and k_S = min(1 − 1/log₁₀ S, 0.7)
    (:func:`pareto_k_threshold`; 0.67 at S = 1000), the first rule that holds decides:

    * ``"retrain"`` when Σ⁻¹ − H_e(μ) is not positive definite (the division has no Gaussian
      answer near μ; Rawat et al. 2022); when k̂ > k_S (importance sampling from q_u is
      unreliable: q_u is far from p̃; Vehtari et al. 2024); when q_u is no closer to p̃ than
      q(θ|D) is (KL(q_u ‖ p̃) ≥ KL(q(θ|D) ‖ p̃) − 2 se, above :data:`KL_FLOOR`: nothing was
      unlearned, or the unlearning made it worse); or when
      fewer than ``min_update_ess_fraction`` (1 %) of q(θ|D)'s draws carry p̃'s weight (update
      ESS / S), however well q_u matches p̃: p̃ then rests on q(θ|D)'s tails, where VI is least
      accurate (on the moons, the exact moment match of such a p̃ is 8× further from the
      retrained posterior on D_e than q(θ|D) is; on a conjugate model it is exact: nothing
      without D_r tells the two apart);
    * ``"approximate"`` when 0.5 ≤ k̂ ≤ k_S (the weights' variance is infinite, PSIS still
      converges: usable; Yao et al. 2018); when unlearning removed less than half of q(θ|D)'s
      distance to p̃ (KL(q_u ‖ p̃) > max(½ KL(q(θ|D) ‖ p̃), :data:`KL_FLOOR`): a q_u near q(θ|D)
      passes the k̂ test whenever the update is small); or when the update's own k̂ exceeds k_S
      (as PSIS-LOO's for a left-out set: q(θ|D)'s draws do not reach p̃ reliably; Vehtari,
      Gelman, Gabry 2017);
    * ``"trusted"`` otherwise: k̂ < 0.5, most of the update made, and within q(θ|D)'s reach.

    Then q(θ|D) itself, where the full data were diagnosed (``fit_pareto_k`` is set): the
    verdict is ``"retrain"`` when p̃ is estimated further from p(θ|D_r) than q(θ|D) is, by more
    than two standard errors (``target_kl`` against ``original_kl``: unlearning towards p̃ is
    worse than doing nothing; on a mini-batch SVI fit, the natural reverse KL and EUBO landed
    0.91 and 3.2 nats from the retrained posterior against q(θ|D)'s 0.83, and this check saw
    both); retraining on D_r refits and does not inherit q(θ|D)'s error. q(θ|D)'s own k̂ above
    k_S alone is not evidence of that: a mean-field q(θ|D) of a hierarchical model had k̂ 0.78
    while its random erasure unlearned to 0.12 nats of the retrained posterior (q(θ|D): 0.43;
    ``benchmarks/bench_trust.py``). A trusted verdict becomes ``"approximate"``
    (:func:`own_fit_caveat`) when q(θ|D) is a poor fit of p(θ|D) (its own k̂ ≥ 0.5, Yao et al.
    2018) or when p̃ is not within half of q(θ|D)'s distance to p(θ|D_r) (the rule q_u meets
    against p̃, applied to p̃ itself): q_u inherits that error, and no unlearning removes it.

    Arguments:
        diagnostics: from :func:`diagnose`.
        min_update_ess_fraction: the update ESS fraction below which to retrain, in [0, 1].
        check_fit: weigh q(θ|D)'s own fit (``False``: the unlearning's verdict alone).

    Returns:
        A :class:`Verdict` ``(label, explanation)``.

    References:
        Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
        Variational Inference. ICML 2018.

        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

        A. Vehtari, A. Gelman, J. Gabry. Practical Bayesian Model Evaluation Using
        Leave-One-Out Cross-Validation and WAIC. Statistics and Computing 27, 2017.

        A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of Bayesian
        Unlearning. ICML 2022 Workshop on Updatable Machine Learning.

    Example:
        >>> d = TrustDiagnostics(pareto_k=0.2, kl=0.01, kl_se=0.005, psis_ess=900.0,
        ...                      update_ess=800.0, update_ess_fraction=0.8, update_pareto_k=0.1,
        ...                      update_kl=0.3, num_samples=1000, lam=0.0)
        >>> verdict(d).label
        'trusted'
        >>> from dataclasses import replace
        >>> far = replace(d, update_ess=2.0, update_ess_fraction=0.002)
        >>> print(verdict(far).explanation)
        retrain: q_u matches p̃ (...), but the erased data move ... = 0.2% < 1%): p̃ rests on ...
        >>> print(verdict(replace(far, kl=0.2)).explanation)
        retrain: the erased data move ... (update ESS 2.0 of 1000 draws = 0.2% < 1%) and k̂ = ...
    """
    if not isinstance(diagnostics, TrustDiagnostics):
        raise TypeError(f"verdict takes TrustDiagnostics, got {type(diagnostics).__name__}")
    if not isinstance(check_fit, bool):
        raise TypeError(f"check_fit must be True or False, got {type(check_fit).__name__}")
    limit = check_in_unit_interval("min_update_ess_fraction", min_update_ess_fraction)
    judged = _unlearning_verdict(diagnostics, limit)
    if not check_fit:
        return judged
    worse = _own_fit_retrain(diagnostics)
    if worse is not None:
        return cap_verdict(judged, Caveats(retrain=[worse]))
    caveat = own_fit_caveat(diagnostics)
    return judged if caveat is None else cap_verdict(judged, Caveats(approximate=[caveat]))


def _own_fit_retrain(d: TrustDiagnostics) -> str | None:
    """Why unlearning q(θ|D) is no better than keeping it, from its own check: p̃₀ estimated
    further from p(θ|D_r) than q(θ|D) is, beyond two standard errors; ``None`` otherwise."""
    if d.fit_pareto_k is None:
        return None
    target, original, se = d.target_kl, d.original_kl, d.target_kl_se
    if target is None or original is None:
        return None
    margin = 2.0 * se if se is not None and math.isfinite(se) else 0.0
    if target - margin > max(original, KL_FLOOR):
        return (
            f"p̃ itself is further from p(θ|D_r) than q(θ|D) is (KL(p̃ ‖ p(θ|D_r)) ≈ "
            f"{target:.3g} ± {se:.2g} against q(θ|D)'s {original:.3g} nats): unlearning towards "
            "it is worse than doing nothing; retraining refits"
        )
    return None


def own_fit_caveat(diagnostics: TrustDiagnostics) -> str | None:
    r"""Why q(θ|D) itself limits the trust in any unlearning of it, or ``None``.

    From Yao et al.'s check of q(θ|D) against p(D, θ) (``fit_pareto_k``, ``target_kl``,
    ``original_kl``; set when :func:`~pyro_unlearn.trust.diagnose` had the full data): q(θ|D)
    is a poor fit when the k̂ of p(D, θ)/q(θ|D) is at least 0.5 (infinite-variance weights;
    above k_S unreliable: Yao et al. 2018, Vehtari et al. 2024); and the target p̃₀ ∝
    q(θ|D)/p(D_e|θ) is itself unreliable when KL(p̃₀ ‖ p(θ|D_r)) exceeds, by two standard
    errors, max(:data:`MAX_KL_SHARE` · KL(q(θ|D) ‖ p(θ|D_r)), :data:`KL_FLOOR`): q(θ|D)'s own error
    (mini-batch SVI noise, a fit stopped early) is as large as the erasure's effect, and
    even an exact q_u = p̃ removes less than half of the distance to retraining.

    Arguments:
        diagnostics: from :func:`~pyro_unlearn.trust.diagnose`.

    Returns:
        A clause quoting the evidence, or ``None`` (no check, or q(θ|D) fits).

    References:
        Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
        Variational Inference. ICML 2018.

    Example:
        >>> d = TrustDiagnostics(pareto_k=0.2, kl=0.001, kl_se=0.001, psis_ess=900.0,
        ...                      update_ess=950.0, update_ess_fraction=0.95, update_pareto_k=0.1,
        ...                      update_kl=0.02, num_samples=1000, lam=0.0, fit_pareto_k=0.3,
        ...                      fit_kl=0.9, fit_kl_se=0.05, target_kl=0.9, target_kl_se=0.05,
        ...                      original_kl=0.92)
        >>> print(own_fit_caveat(d))
        p̃ itself is not much closer to p(θ|D_r) than q(θ|D) is (KL(p̃ ‖ p(θ|D_r)) ≈ 0.9 ...
        >>> verdict(d).label, verdict(d, check_fit=False).label
        ('approximate', 'trusted')
    """
    d = diagnostics
    if d.fit_pareto_k is None:
        return None
    cannot = "; unlearning cannot remove that error (a richer guide, or a q(θ|D) fitted closer)"
    k_max = pareto_k_threshold(d.num_samples)
    if not d.fit_pareto_k < GOOD_PARETO_K:  # nan counts as poor
        how = "unreliable" if not d.fit_pareto_k <= k_max else "imperfect"
        return (
            f"q(θ|D) itself is a poor fit of p(θ|D) (k̂ of p(D, θ)/q(θ|D) = "
            f"{d.fit_pareto_k:.2f} ≥ {GOOD_PARETO_K}: {how})" + cannot
        )
    target, original, se = d.target_kl, d.original_kl, d.target_kl_se
    if target is not None and original is not None:
        margin = 2.0 * se if se is not None and math.isfinite(se) else 0.0
        if not target - margin <= max(MAX_KL_SHARE * original, KL_FLOOR):  # nan: far
            return (
                f"p̃ itself is not much closer to p(θ|D_r) than q(θ|D) is (KL(p̃ ‖ p(θ|D_r)) ≈ "
                f"{target:.3g} against q(θ|D)'s {original:.3g} nats; KL(q(θ|D) ‖ p(θ|D)) ≈ "
                f"{d.fit_kl:.3g})" + cannot
            )
    return None


def _unlearning_verdict(d: TrustDiagnostics, limit: float) -> Verdict:
    """The rules of :func:`verdict` on q_u and the update, before q(θ|D)'s own fit."""
    k_max = pareto_k_threshold(d.num_samples)
    fit = (
        f"k̂ = {d.pareto_k:.2f}, KL(q_u ‖ p̃) ≈ {d.kl:.3g} ± {d.kl_se:.2g} nats "
        f"(q(θ|D)'s {d.update_kl:.3g})"
    )
    update = (
        f"update ESS {d.update_ess:.1f} of {d.num_samples} draws = "
        f"{100 * d.update_ess_fraction:.2g}%"
    )
    if d.precision_positive_definite is False:
        why = f"the erased data carry more precision than q(θ|D) holds ({d.precision_share:.3g}"
        if d.lam > 0.0:  # the precision is the unadjusted likelihood's, p̃ the adjusted one
            why = f"{why} ≥ 1 of it, unadjusted by λ = {d.lam:.3g}"
            if d.update_pareto_k == -math.inf:
                why += (
                    "; p_adj(D_e|θ) is constant on q(θ|D)'s draws at that λ, so p̃ is q(θ|D) "
                    "there and q(θ|D)'s KL to it 0"
                )
            return Verdict("retrain", f"retrain: {why}); retrain on D_r. {fit}; {update}")
        return Verdict("retrain", f"retrain: {why} ≥ 1 of it); retrain on D_r. {fit}; {update}")
    if not d.pareto_k <= k_max:  # nan counts as unreliable
        return Verdict("retrain", f"retrain: q_u is far from p̃ ({fit}; k̂ > {k_max:.2f}). {update}")
    if d.kl > KL_FLOOR and d.kl >= d.update_kl - 2.0 * d.kl_se:
        why = "q_u is no closer to p̃ than q(θ|D) is: nothing was unlearned, or it made it worse"
        return Verdict("retrain", f"retrain: {why} ({fit}). {update}")
    far = d.pareto_k >= GOOD_PARETO_K or d.kl > max(MAX_KL_SHARE * d.update_kl, KL_FLOOR)
    if d.update_ess_fraction < limit:
        reach = f"the erased data move the posterior further than q(θ|D) reaches ({update} < "
        if far:
            return Verdict("retrain", f"retrain: {reach}{100 * limit:.2g}%) and {fit}")
        return Verdict(
            "retrain",
            f"retrain: q_u matches p̃ ({fit}), but {reach}{100 * limit:.2g}%): p̃ rests on "
            "q(θ|D)'s tails, which nothing without D_r checks; retrain on D_r",
        )
    if d.pareto_k >= GOOD_PARETO_K:
        return Verdict(
            "approximate", f"approximate: q_u is near p̃ ({fit}; k̂ ≤ {k_max:.2f}). {update}"
        )
    if far:
        return Verdict(
            "approximate",
            f"approximate: q_u is more than half as far from p̃ as q(θ|D) is ({fit}). {update}",
        )
    if not d.update_pareto_k <= k_max:
        return Verdict(
            "approximate",
            f"approximate: q_u matches p̃ ({fit}), but p̃ rests on q(θ|D)'s tails ({update}, "
            f"their k̂ = {d.update_pareto_k:.2f} > {k_max:.2f})",
        )
    return Verdict("trusted", f"trusted: q_u matches p̃ ({fit}). {update}")


def weighted_verdict(
    diagnostics: TrustDiagnostics, *, min_update_ess_fraction: float = MIN_UPDATE_ESS_FRACTION
) -> Verdict:
    r"""The verdict on weighted draws: draws θ_s of p(θ|D) reweighted by v_s = 1/p_adj(D_e|θ_s)
    (:func:`~pyro_unlearn.mcmc_unlearn`), diagnosed by :func:`~pyro_unlearn.trust.diagnose_draws`.

    The reweighting *is* importance sampling of p̃ ∝ p(θ|D)/p_adj(D_e|θ) from p(θ|D)'s draws, so
    its own PSIS k̂ and effective sample size are the evidence (Vehtari et al. 2024); there is
    no density to score p̃ against (``kl`` is NaN). With k_S = min(1 − 1/log₁₀ S, 0.7):

    * ``"retrain"`` (rerun MCMC on D_r) when the ESS is below ``min_update_ess_fraction`` (1 %)
      of the S draws, or k̂ > k_S: the weights rest on a few draws in p(θ|D)'s tail and the
      estimates' error is unbounded in practice;
    * ``"approximate"`` when 0.5 ≤ k̂ ≤ k_S: the weights' variance is infinite but PSIS still
      converges, with a large Monte-Carlo error;
    * ``"trusted"`` otherwise: the weighted draws stand for p(θ|D_r) up to the Monte-Carlo
      error of their ESS.

    Arguments:
        diagnostics: from :func:`~pyro_unlearn.trust.diagnose_draws`.
        min_update_ess_fraction: the ESS fraction below which to retrain, in [0, 1].

    Returns:
        A :class:`Verdict` ``(label, explanation)``.

    References:
        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

        A. Kong, J. S. Liu, W. H. Wong. Sequential Imputations and Bayesian Missing Data
        Problems. Journal of the American Statistical Association, 1994.

    Example:
        >>> d = TrustDiagnostics(pareto_k=0.3, kl=math.nan, kl_se=math.nan, psis_ess=700.0,
        ...                      update_ess=690.0, update_ess_fraction=0.69, update_pareto_k=0.3,
        ...                      update_kl=0.2, num_samples=1000, lam=0.0)
        >>> weighted_verdict(d).label
        'trusted'
        >>> from dataclasses import replace
        >>> weighted_verdict(replace(d, pareto_k=0.9)).label
        'retrain'
    """
    if not isinstance(diagnostics, TrustDiagnostics):
        raise TypeError(
            f"weighted_verdict takes TrustDiagnostics, got {type(diagnostics).__name__}"
        )
    limit = check_in_unit_interval("min_update_ess_fraction", min_update_ess_fraction)
    d, k_max = diagnostics, pareto_k_threshold(diagnostics.num_samples)
    evidence = (
        f"k̂ = {d.pareto_k:.2f} of the weights 1/p(D_e|θ_s), ESS {d.update_ess:.1f} of "
        f"{d.num_samples} draws = {100 * d.update_ess_fraction:.2g}%, KL(p(θ|D) ‖ p̃) ≈ "
        f"{d.update_kl:.3g} nats"
    )
    if d.update_ess_fraction < limit:
        return Verdict(
            "retrain",
            f"retrain: the erased data move the posterior further than the draws of p(θ|D) "
            f"reach ({evidence}; ESS < {100 * limit:.2g}%); rerun MCMC on D_r",
        )
    if not d.pareto_k <= k_max:  # nan counts as unreliable
        return Verdict(
            "retrain",
            f"retrain: the reweighted draws are unreliable ({evidence}; k̂ > {k_max:.2f}); "
            "rerun MCMC on D_r",
        )
    if d.pareto_k >= GOOD_PARETO_K:
        return Verdict(
            "approximate",
            f"approximate: the reweighted draws are usable with a large Monte-Carlo error "
            f"({evidence}; {GOOD_PARETO_K} ≤ k̂ ≤ {k_max:.2f})",
        )
    return Verdict("trusted", f"trusted: the reweighted draws stand for p(θ|D_r) ({evidence})")
