"""Diagnostics of weighted draws: p(θ|D)'s draws reweighted by 1/p_adj(D_e|θ), judged by PSIS."""

from __future__ import annotations

import math

import torch

from .diagnostics import MIN_SAMPLES, TrustDiagnostics
from .weights import as_log_weights, summarize_weights

__all__ = ["diagnose_draws"]


def diagnose_draws(log_likelihood: torch.Tensor, *, lam: float = 0.0) -> TrustDiagnostics:
    r"""The :class:`TrustDiagnostics` of draws θ_s ~ p(θ|D) reweighted into p̃ ∝ p(θ|D)/p(D_e|θ):

    .. math:: \log v_s = −\log p(D_e|θ_s), \qquad θ_s \sim p(θ|D),

    the weights :func:`~pyro_unlearn.mcmc_unlearn` draws its answer with. The reweighting is
    importance sampling from p(θ|D)'s draws, so the unlearned posterior *is* those draws with
    weights v, and its diagnostics are the weights' own: ``pareto_k`` and ``update_pareto_k``
    are both the PSIS k̂ of v (Vehtari et al. 2024; PSIS-LOO's k̂ for leaving D_e out),
    ``psis_ess`` the ESS of the smoothed weights, ``update_ess`` (``update_ess_fraction``) that
    of the raw weights, ``update_kl`` the estimate of KL(p(θ|D) ‖ p̃/Z̃): how far the erased
    data move the posterior. ``kl`` and ``kl_se`` are NaN: weighted draws have no density to
    score p̃ against, and their error is the importance sampling's, which k̂ and the ESS
    measure. The draws are taken as independent (PSIS's relative efficiency 1): autocorrelated
    MCMC draws make the ESS optimistic by their own factor. The precision fields are ``None``.

    Arguments:
        log_likelihood: log p_adj(D_e|θ_s), ``(S,)``, S ≥ :data:`MIN_SAMPLES`, on any device
            (one transfer: PSIS is NumPy).
        lam: the λ the likelihood was adjusted with (recorded only).

    Returns:
        The :class:`TrustDiagnostics`, read with
        :func:`~pyro_unlearn.trust.weighted_verdict`.

    Raises:
        ValueError: for fewer than :data:`MIN_SAMPLES` draws, a tensor that is not ``(S,)``,
            or a non-finite log-likelihood.

    References:
        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

        A. E. Gelfand, D. K. Dey, H. Chang. Model Determination Using Predictive Distributions
        with Implementation via Sampling-Based Methods. Bayesian Statistics 4, 1992.

    Example:
        Ten observations y_n ~ N(θ, 1), θ ~ N(0, 1), put p(θ|D) at N(0, 1/11) (their mean 0);
        erasing one, y = 0.5, is a small update:

        >>> theta = torch.randn(4000, generator=torch.Generator().manual_seed(0)) / 11**0.5
        >>> d = diagnose_draws(-0.5 * (0.5 - theta) ** 2)  # log p(y|θ) up to a constant
        >>> d.pareto_k < 0.5, d.update_ess_fraction > 0.9, math.isnan(d.kl)
        (True, True, True)
    """
    if not isinstance(log_likelihood, torch.Tensor) or log_likelihood.dim() != 1:
        raise ValueError("log_likelihood must be a tensor (S,): log p(D_e|θ_s) per draw")
    num = log_likelihood.numel()
    if num < MIN_SAMPLES:
        raise ValueError(
            f"PSIS needs at least {MIN_SAMPLES} draws to fit the weights' tail, got {num}"
        )
    weights = summarize_weights(as_log_weights(-log_likelihood, "−log p_adj(D_e|θ_s)"))
    return TrustDiagnostics(
        pareto_k=weights.pareto_k,
        kl=math.nan,
        kl_se=math.nan,
        psis_ess=weights.ess,
        update_ess=weights.raw_ess,
        update_ess_fraction=weights.raw_ess / num,
        update_pareto_k=weights.pareto_k,
        update_kl=weights.kl,
        num_samples=num,
        lam=float(lam),
    )
