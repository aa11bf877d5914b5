r"""How far to trust an unlearned q(u) of a GPyTorch sparse GP, judged without D_r."""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.likelihoods import _GaussianLikelihoodBase

from ...infer.adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold
from ...posterior import FrozenPosterior
from ...traces import preserved_rng
from ...trust import MIN_SAMPLES, TrustDiagnostics, as_log_weights, summarize_weights
from ...validation import check_positive_int
from .conditional import (
    Projection,
    check_gp_data,
    expected_log_prob,
    per_output_log_likelihood,
    projections,
)
from .inducing import inducing_distribution
from .strategy import variational_strategy

__all__ = ["diagnose_inducing", "erased_precision_share"]


def _sum_batch(value: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``(S, *batch)`` → ``(S,)``: a batch GP's outputs' u are one latent."""
    return value.sum(tuple(range(-batch_dims, 0))) if batch_dims else value


def _erased_curvature(
    likelihood: gpytorch.likelihoods.Likelihood,
    chunks: list[Projection],
    loc: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """H_e = −∇²_u log p̃(D_e|u) at u = ``loc``, ``(*batch, M, M)``: Bᵀ diag(h) B summed over
    chunks, B = ∂E[f|u]/∂u and h_i = −∂²E_{p(f_i|u)}[log p(y_i|f_i)]/∂E[f_i|u]² (per point,
    by automatic differentiation: exact and constant in u for a Gaussian likelihood)."""
    total = loc.new_zeros(*loc.shape, loc.shape[-1])
    for start, proj in zip(range(0, targets.shape[-1], chunk_size), chunks, strict=False):
        y = targets[..., start : start + chunk_size]
        mean = proj.f_mean(loc).detach().requires_grad_(True)
        with torch.enable_grad():
            log_p = expected_log_prob(likelihood, y, mean, proj.var).sum()
            (slope,) = torch.autograd.grad(log_p, mean, create_graph=True)
            (bend,) = torch.autograd.grad(slope.sum(), mean, allow_unused=True)
        h = torch.zeros_like(mean) if bend is None else -bend.detach()
        b = proj.a  # whitened: ∂E[f|u]/∂u = L⁻¹K_Zx
        if not proj.whitened:  # u − m(Z) = L v: ∂E[f|u]/∂u = L⁻ᵀ L⁻¹ K_Zx = K_ZZ⁻¹ K_Zx
            b = torch.linalg.solve_triangular(proj.chol.mT, b, upper=True)
        total = total + (b * h.unsqueeze(-2)) @ b.mT
    return total


def erased_precision_share(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    posterior: FrozenPosterior,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    *,
    chunks: list[Projection] | None = None,
    finite: bool = True,
) -> float:
    r"""The share of q(u|D)'s precision that the erased data carry, L-BUN's test of whether
    q(u|D)/p̃(D_e|u) is a distribution: with q(u|D) = N(μ, Σ) = N(μ, CCᵀ),

    .. math:: s = \lambda_\max(C^\top H_e C), \qquad
              H_e = -\nabla_u^2 \log \tilde p(D_e|u)\big|_{u=μ} = B^\top \Lambda_e B,

    B = ∂E[f(X_e)|u]/∂u (:math:`L^{-1}K_{Ze}` for the whitened strategy,
    :math:`K_{ZZ}^{-1}K_{Ze}` for the unwhitened one) and Λ_e the likelihood's curvature per
    point (:math:`\Sigma_e^{-1}` for a Gaussian likelihood, where H_e is constant in u and the
    test exact). s < 1 exactly when Σ⁻¹ − H_e is positive definite; s ≥ 1 means the division
    has no Gaussian answer: the erased data carry more precision than q(u|D) holds, which a
    q(u|D) short of its optimum or a mean-field q(u|D) facing a cluster of erased points shows.
    A batch GP's outputs are independent blocks: s is their largest.

    Arguments:
        gp: the GP (a supported ``ApproximateGP``; its hyperparameters are used, not changed).
        likelihood: its likelihood.
        posterior: the frozen q(u|D) (:func:`~pyro_unlearn.contrib.gpytorch.freeze_inducing`).
        inputs: D_e's inputs, ``(N, D)`` or ``(N,)``.
        targets: D_e's targets, ``(*batch, N)``.
        chunk_size: points per chunk (memory M × ``chunk_size``).
        chunks: the :func:`~pyro_unlearn.contrib.gpytorch.conditional.projections` of
            ``inputs`` in chunks of ``chunk_size``, when already computed.
        finite: check that the data are finite (``False``: their sizes only).

    Returns:
        s, a float.

    References:
        A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of Bayesian
        Unlearning. ICML 2022 Workshop on Updatable Machine Learning.

    Example:
        >>> import gpytorch, torch
        >>> from pyro_unlearn.contrib.gpytorch import freeze_inducing
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self, z):
        ...         q = gpytorch.variational.CholeskyVariationalDistribution(len(z))
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        ...         self.mean_module = gpytorch.means.ZeroMean()
        ...         self.covar_module = gpytorch.kernels.RBFKernel()
        ...     def forward(self, x):
        ...         return gpytorch.distributions.MultivariateNormal(
        ...             self.mean_module(x), self.covar_module(x))
        >>> x = torch.linspace(0, 1, 20)
        >>> gp, likelihood = GP(x[::4].unsqueeze(-1)), gpytorch.likelihoods.GaussianLikelihood()
        >>> _ = gp(x)  # q(u) = p(u): no data yet, so any erasure asks for more than it holds
        >>> erased_precision_share(gp, likelihood, freeze_inducing(gp), x[:5], x[:5]) > 1.0
        True
    """
    strategy = variational_strategy(gp)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    check_gp_data(strategy, inputs, targets, finite=finite)
    q_data = inducing_distribution(posterior)
    chunks = chunks or projections(strategy, inputs, chunk_size)
    return _precision_share(likelihood, q_data, chunks, targets, chunk_size)


def _precision_share(
    likelihood: gpytorch.likelihoods.Likelihood,
    q_data: MultivariateNormal,
    chunks: list[Projection],
    targets: torch.Tensor,
    chunk_size: int,
) -> float:
    """λ_max(Cᵀ H_e C) for q(u|D) = N(μ, CCᵀ), the largest over a batch GP's outputs."""
    curvature = _erased_curvature(likelihood, chunks, q_data.mean, targets, chunk_size)
    tril = torch.linalg.cholesky(q_data.covariance_matrix)
    inner = tril.mT @ curvature @ tril
    return float(torch.linalg.eigvalsh(0.5 * (inner + inner.mT))[..., -1].max())


def diagnose_inducing(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    posterior: FrozenPosterior,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    lam: float = 0.0,
    num_samples: int = 1000,
    chunk_size: int = 4096,
    precision: bool | None = None,
) -> TrustDiagnostics:
    r"""Check the GP's current q(u) =: q_u against the target of unlearning, known up to its
    constant and computed without D_r:

    .. math:: \log \tilde p(u) = \log q(u|D) − \log p_\mathrm{adj}(D_e|u; λ), \qquad
              \log \tilde p(D_e|u) = \textstyle\sum_i \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)],

    the likelihood the objectives use
    (:func:`~pyro_unlearn.contrib.gpytorch.inducing_log_likelihood`). As
    :func:`pyro_unlearn.trust.diagnose` does for Pyro guides: the PSIS k̂ of
    log w = log p̃(u) − log q_u(u), u ~ q_u, and KL(q_u ‖ p̃/Z̃) ± its Monte-Carlo error;
    from u ~ q(u|D), the ESS, k̂ and KL of the weights 1/p_adj(D_e|u) (how far the erased data
    move q(u): an ESS of a few draws means no importance-weighted method, the paper's reverse
    KL included, reaches p̃ from q(u|D)); and, for a Gaussian likelihood (or on request,
    then at u = μ), :func:`erased_precision_share`. Draws are batched tensor ops on the GP's
    device and dtype; only k̂ and sums over draws are computed on the CPU (ArviZ's PSIS is
    NumPy). Pass the result to :func:`pyro_unlearn.trust.verdict`.

    Arguments:
        gp: the GP whose q(u) was unlearned (its hyperparameters fixed, as during unlearning).
        likelihood: its likelihood.
        posterior: the frozen q(u|D) it was unlearned from.
        inputs: all of D_e's inputs, ``(N, D)`` or ``(N,)``.
        targets: D_e's targets, ``(*batch, N)``.
        lam: λ ∈ [0, 1] of the adjusted likelihood, as the unlearning used.
        num_samples: S ≥ :data:`~pyro_unlearn.trust.MIN_SAMPLES` draws from each of q_u and
            q(u|D).
        chunk_size: erased points per chunk.
        precision: whether to run the precision test; ``None``: for Gaussian likelihoods.

    Returns:
        :class:`pyro_unlearn.trust.TrustDiagnostics`.

    Raises:
        TypeError, ValueError: a GP, likelihood or posterior of the wrong kind or shape, bad
            data (named with the first non-finite row), or non-finite log-weights.

    References:
        - Y. Yao, A. Vehtari, D. Simpson, A. Gelman. Yes, but Did It Work?: Evaluating
          Variational Inference. ICML 2018.
        - A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
          Sampling. JMLR 25(72), 2024.
        - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        eubo = pug.VariationalEUBO(likelihood, gp, posterior, num_erased=len(y_e))
        ...  # unlearn
        d = pug.diagnose_inducing(gp, likelihood, posterior, x_e, y_e)  # or eubo.diagnose(x_e, y_e)
        pu.trust.verdict(d).label  # "trusted", "approximate" or "retrain"
    """
    strategy = variational_strategy(gp)
    if not isinstance(likelihood, gpytorch.likelihoods.Likelihood):
        raise TypeError(
            f"likelihood must be a gpytorch.likelihoods.Likelihood, got {type(likelihood).__name__}"
        )
    lam, num_samples = check_lam(lam), check_positive_int("num_samples", num_samples)
    if num_samples < MIN_SAMPLES:
        raise ValueError(f"num_samples must be at least {MIN_SAMPLES}, got {num_samples}")
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if precision is not None and not isinstance(precision, bool):
        raise TypeError(f"precision must be None or a bool, got {precision!r}")
    check_gp_data(strategy, inputs, targets)
    q_u, q_data = inducing_distribution(gp), inducing_distribution(posterior)
    if q_u.mean.shape != q_data.mean.shape:
        raise ValueError(
            f"the frozen q(u|D) has shape {tuple(q_data.mean.shape)}, this GP's q(u) "
            f"{tuple(q_u.mean.shape)}"
        )
    k = len(q_data.batch_shape)
    with torch.no_grad():
        chunks = projections(strategy, inputs, chunk_size)
        threshold = None
        if lam > 0.0:
            threshold = log_threshold(lam, _sum_batch(q_data.log_prob(q_data.mean[None]), k)[0])

        def draw(source: MultivariateNormal) -> tuple[torch.Tensor, ...]:
            u = source.sample(torch.Size([num_samples]))
            log_q = _sum_batch(q_data.log_prob(u), k)
            log_lik = per_output_log_likelihood(
                gp, likelihood, u, inputs, targets, chunk_size, chunks
            )
            log_lik = _sum_batch(log_lik, k)
            if threshold is not None:
                log_lik = adjusted_log_likelihood(log_lik, log_q, threshold)
            return _sum_batch(source.log_prob(u), k), log_q, log_lik

        # common random numbers: the two KL estimates the verdict compares are correlated
        # (equal when q_u is q(u|D): nothing unlearned reads "retrain" on any draws)
        with preserved_rng(inputs, targets, q_u.mean):
            log_q_u, log_q, log_lik = draw(q_u)
        _, _, log_lik_d = draw(q_data)
    fit = summarize_weights(as_log_weights(log_q - log_lik - log_q_u, "log p̃(u) − log q_u(u)"))
    update = summarize_weights(as_log_weights(-log_lik_d, "−log p_adj(D_e|u)"))
    if precision is None:
        precision = isinstance(likelihood, _GaussianLikelihoodBase)
    share = _precision_share(likelihood, q_data, chunks, targets, chunk_size) if precision else None
    return TrustDiagnostics.from_weights(fit, update, num_samples, lam, share)
