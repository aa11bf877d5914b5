"""How far to trust an unlearned posterior, judged without D_r.

The unlearned q_u approximates a target known up to its constant,
p̃(θ) ∝ q(θ|D)/p_adj(D_e|θ; λ), so it can be checked as variational approximations are checked
against a posterior: Pareto-smoothed importance sampling (Yao et al. 2018, Vehtari et al. 2024)
gives k̂ and an estimate of KL(q_u ‖ p̃); the effective sample size of the weights 1/p_adj(D_e|θ)
under q(θ|D) says how large the requested update is. :func:`diagnose` computes them,
:func:`verdict` turns them into ``"trusted"``, ``"approximate"`` or ``"retrain"`` with a one-line
explanation, capped by what the method vouches for (:class:`Caveats`). Every unlearning method
runs this check on its result (:func:`attach_trust`; :func:`attach_draws_trust` for weighted
draws, :func:`diagnose_draws` and :func:`weighted_verdict`).
"""

from .attach import (
    DIAGNOSABLE_ERRORS,
    attach_draws_trust,
    attach_trust,
    check_diagnose_options,
)
from .diagnostics import MIN_SAMPLES, TrustDiagnostics, diagnose, without_fit_check
from .draws import diagnose_draws
from .fit import OwnFit, erased_parts, fit_log_weights, fit_summary, target_kl
from .verdicts import (
    GOOD_PARETO_K,
    KL_FLOOR,
    MAX_KL_SHARE,
    MIN_UPDATE_ESS_FRACTION,
    VERDICTS,
    Caveats,
    Verdict,
    cap_verdict,
    own_fit_caveat,
    pareto_k_threshold,
    verdict,
    weighted_verdict,
)
from .weights import WeightSummary, as_log_weights, pareto_smooth, summarize_weights

__all__ = [
    "DIAGNOSABLE_ERRORS",
    "GOOD_PARETO_K",
    "KL_FLOOR",
    "MAX_KL_SHARE",
    "MIN_SAMPLES",
    "MIN_UPDATE_ESS_FRACTION",
    "VERDICTS",
    "Caveats",
    "OwnFit",
    "TrustDiagnostics",
    "Verdict",
    "WeightSummary",
    "as_log_weights",
    "attach_draws_trust",
    "attach_trust",
    "cap_verdict",
    "check_diagnose_options",
    "diagnose",
    "diagnose_draws",
    "erased_parts",
    "fit_log_weights",
    "fit_summary",
    "own_fit_caveat",
    "pareto_k_threshold",
    "pareto_smooth",
    "summarize_weights",
    "target_kl",
    "verdict",
    "weighted_verdict",
    "without_fit_check",
]
