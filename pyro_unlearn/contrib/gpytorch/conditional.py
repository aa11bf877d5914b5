r"""The conditional p(f|u) of a sparse variational GP, and the likelihood of data given u."""

from __future__ import annotations

from dataclasses import dataclass

import gpytorch
import pyro.distributions as dist
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.variational import VariationalStrategy
from linear_operator.operators import DiagLinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky

from ...validation import check_finite, check_positive_int
from .strategy import variational_strategy

__all__ = [
    "Projection",
    "check_gp_data",
    "expected_log_prob",
    "gp_inputs",
    "inducing_log_likelihood",
    "per_output_log_likelihood",
    "project",
    "projections",
]


@dataclass
class Projection:
    r"""The kernel algebra of p(f(x)|u) at fixed hyperparameters (constants, no gradient):

    .. math:: p(f(x)|u) = N\big(m(x) + a^\top v,\; k(x, x) - \|a\|^2\big), \qquad
              a = L^{-1} K_{Zx}, \quad L L^\top = K_{ZZ},

    with :math:`v = u` (whitened) or :math:`v = L^{-1}(u - m(Z))` (unwhitened).
    """

    a: torch.Tensor  # L⁻¹ K_Zx, (*batch, M, N)
    mean: torch.Tensor  # m(x), (*batch, N)
    var: torch.Tensor  # k(x, x) − ‖a‖², (*batch, N)
    chol: torch.Tensor  # L, (*batch, M, M)
    mean_z: torch.Tensor  # m(Z), (*batch, M)
    whitened: bool

    def f_mean(self, u: torch.Tensor) -> torch.Tensor:
        """E[f(x)|u] for u of shape (..., *batch, M): (..., *batch, N), differentiable in u."""
        v = u
        if not self.whitened:
            v = torch.linalg.solve_triangular(
                self.chol, (u - self.mean_z).unsqueeze(-1), upper=False
            ).squeeze(-1)
        return self.mean + (v.unsqueeze(-2) @ self.a).squeeze(-2)

    def prior(self) -> dist.MultivariateNormal:
        """p(u): N(0, I) (whitened) or N(m(Z), K_ZZ)."""
        if self.whitened:
            eye = torch.eye(self.chol.shape[-1], dtype=self.a.dtype, device=self.a.device)
            return dist.MultivariateNormal(
                torch.zeros_like(self.mean_z), scale_tril=eye.expand_as(self.chol)
            )
        return dist.MultivariateNormal(self.mean_z, scale_tril=self.chol)


def gp_inputs(x: torch.Tensor) -> torch.Tensor:
    """Inputs as a GP takes them, ``(*batch, N, D)``: 1-D inputs ``(N,)`` become ``(N, 1)``, as
    :class:`gpytorch.models.ApproximateGP` does on its call.

    Example:
        >>> gp_inputs(torch.zeros(5)).shape
        torch.Size([5, 1])
    """
    return x.unsqueeze(-1) if x.dim() == 1 else x


def check_gp_data(
    strategy: VariationalStrategy,
    inputs: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    finite: bool = True,
) -> None:
    """Refuse data a sparse GP cannot score, naming the argument: ``targets`` ``(*batch, N)``
    whose batch dims the GP's batch shape cannot take, ``inputs`` ``(*batch, N, D)`` (or
    ``(N,)``) whose feature count is not the inducing points' or whose N is not the targets',
    and (``finite``) NaN or ±inf in either, with the first offending data point.

    Arguments:
        strategy: the GP's variational strategy.
        inputs: the points' inputs, or ``None`` when they are not needed.
        targets: their targets, as GPyTorch takes them.
        finite: also check finiteness (a pass over the data: per step, only under validation).

    Example:
        >>> import gpytorch
        >>> z = torch.zeros(3, 1)
        >>> q = gpytorch.variational.CholeskyVariationalDistribution(3)
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self):
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        >>> strategy = GP().variational_strategy
        >>> check_gp_data(strategy, torch.zeros(4), torch.tensor([0.0, 1.0, float("nan"), 0.0]))
        Traceback (most recent call last):
        ...
        ValueError: target has a non-finite value (nan) at row 2: the data must be finite
    """
    if not isinstance(targets, torch.Tensor) or targets.dim() == 0:
        raise TypeError(
            f"target must be a tensor (*batch, N) of the points' targets, got {targets!r}"
        )
    batch = strategy._variational_distribution.batch_shape
    try:
        ok = torch.broadcast_shapes(targets.shape[:-1], batch) == batch
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"target has shape {tuple(targets.shape)}: a GP of batch shape {tuple(batch)} takes "
            f"targets (*batch, N), one row per output"
        )
    if inputs is not None:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
        x = gp_inputs(inputs)
        features = strategy.inducing_points.shape[-1]
        if x.shape[-1] != features:
            raise ValueError(
                f"inputs have {x.shape[-1]} features (shape {tuple(inputs.shape)}), the GP's "
                f"inducing points {features}"
            )
        if x.shape[-2] != targets.shape[-1]:
            raise ValueError(
                f"inputs have {x.shape[-2]} points, target {targets.shape[-1]} (its last dim): "
                "one target per input"
            )
        if finite:
            check_finite("inputs", x.movedim(-2, 0))
    if finite:
        check_finite("target", targets.movedim(-1, 0))


def project(strategy: VariationalStrategy, x: torch.Tensor) -> Projection:
    """The :class:`Projection` p(f(x)|u) of a supported strategy at inputs ``x`` (*batch, N, D),
    or ``(N,)`` for 1-D inputs, with every hyperparameter held fixed (no gradient)."""
    x = gp_inputs(x)
    with torch.no_grad():
        z = strategy.inducing_points
        batch = torch.broadcast_shapes(z.shape[:-2], x.shape[:-2])
        z = z.expand(*batch, *z.shape[-2:])
        x = x.expand(*batch, *x.shape[-2:])
        m = z.shape[-2]
        prior = strategy.model.forward(torch.cat([z, x], dim=-2))
        cov = prior.lazy_covariance_matrix
        kzz = cov[..., :m, :m].add_jitter(strategy.jitter_val).to_dense()
        kzx = cov[..., :m, m:].to_dense()
        kxx = cov[..., m:, m:].diagonal(dim1=-1, dim2=-2)
        chol = psd_safe_cholesky(kzz)
        a = torch.linalg.solve_triangular(chol, kzx, upper=False)
        whitened = isinstance(strategy, VariationalStrategy)
        var = kxx - a.square().sum(-2) + (strategy.jitter_val if whitened else 0.0)
        mean = prior.mean
        return Projection(a, mean[..., m:], var.clamp_min(0.0), chol, mean[..., :m], whitened)


def projections(
    strategy: VariationalStrategy, inputs: torch.Tensor, chunk_size: int
) -> list[Projection]:
    """p(f|u) for each chunk of ``chunk_size`` points of ``inputs`` (a loop over chunks, not
    points: memory stays M × ``chunk_size`` per chunk)."""
    chunk_size = check_positive_int("chunk_size", chunk_size)
    inputs = gp_inputs(inputs)
    n = inputs.shape[-2]
    return [project(strategy, inputs[..., i : i + chunk_size, :]) for i in range(0, n, chunk_size)]


def expected_log_prob(
    likelihood: gpytorch.likelihoods.Likelihood,
    target: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    """E_{N(f; mean, var)}[log p(y|f)] per point, by GPyTorch's likelihood (closed form for a
    Gaussian likelihood, Gauss–Hermite quadrature for the others), the likelihood's
    hyperparameters held fixed (no gradient reaches them)."""
    var = var.expand_as(mean)
    params = [p for p in likelihood.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        with gpytorch.settings.debug(False):  # its shape checks don't know about particles
            f = MultivariateNormal(mean, DiagLinearOperator(var))
            return likelihood.expected_log_prob(target, f)
    finally:
        for p in params:
            p.requires_grad_(True)


def per_output_log_likelihood(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    u: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
    chunks: list[Projection] | None = None,
) -> torch.Tensor:
    """:func:`inducing_log_likelihood` before summing a batch GP's outputs: ``(S, *batch)``.
    ``chunks`` are the :func:`projections` of ``inputs``, when already computed."""
    strategy = variational_strategy(gp)
    inputs = gp_inputs(inputs)
    chunks = chunks or projections(strategy, inputs, chunk_size)
    total = torch.zeros((), dtype=u.dtype, device=u.device)
    for start, proj in zip(range(0, inputs.shape[-2], chunk_size), chunks, strict=True):
        y = targets[..., start : start + chunk_size]
        total = total + expected_log_prob(likelihood, y, proj.f_mean(u), proj.var).sum(-1)
    return total


def inducing_log_likelihood(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    u: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 4096,
) -> torch.Tensor:
    r"""The log-likelihood of data given the inducing values u, as the SVGP bound defines it:

    .. math:: \log \tilde p(D_e|u) = \sum_i \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)],

    so that :math:`\mathbb{E}_{q(u)}[\log \tilde p(D|u)] - \mathrm{KL}(q(u)\|p(u))` is GPyTorch's
    variational ELBO. Computed over chunks of ``chunk_size`` points (bounded memory), with the
    GP's hyperparameters fixed; differentiable in ``u``.

    Arguments:
        gp: the GP (a supported ``ApproximateGP``).
        likelihood: its GPyTorch likelihood.
        u: inducing values, ``(S, *batch, M)`` (``batch`` the GP's batch shape).
        inputs: the points' inputs, ``(N, D)``.
        targets: their targets, ``(*batch, N)`` as GPyTorch takes them.
        chunk_size: points per chunk.

    Returns:
        log p̃(D_e|u) for each of the S values of u, ``(S,)`` (a batch GP's outputs summed).

    References:
        J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
        Classification. AISTATS 2015.

    Example::

        >>> import gpytorch, torch
        >>> from pyro_unlearn.contrib.gpytorch import (inducing_distribution,
        ...                                            inducing_log_likelihood)
        >>> class GP(gpytorch.models.ApproximateGP):
        ...     def __init__(self, z):
        ...         q = gpytorch.variational.CholeskyVariationalDistribution(len(z))
        ...         super().__init__(gpytorch.variational.VariationalStrategy(self, z, q))
        ...         self.mean_module = gpytorch.means.ZeroMean()
        ...         self.covar_module = gpytorch.kernels.RBFKernel()
        ...     def forward(self, x):
        ...         return gpytorch.distributions.MultivariateNormal(
        ...             self.mean_module(x), self.covar_module(x))
        >>> x = torch.linspace(0, 1, 10).unsqueeze(-1)
        >>> gp, likelihood = GP(x[::3].clone()), gpytorch.likelihoods.GaussianLikelihood()
        >>> u = inducing_distribution(gp).sample(torch.Size([5]))  # (5, 4)
        >>> inducing_log_likelihood(gp, likelihood, u, x, torch.sin(x).squeeze(-1)).shape
        torch.Size([5])
    """
    strategy = variational_strategy(gp)
    shape = strategy._variational_distribution.shape()
    if not isinstance(u, torch.Tensor) or u.dim() <= len(shape) or u.shape[-len(shape) :] != shape:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be (S, *batch, M) = (S, {', '.join(map(str, shape))}), got {got}")
    check_positive_int("chunk_size", chunk_size)
    check_gp_data(strategy, inputs, targets)
    check_finite("u", u)
    per_output = per_output_log_likelihood(gp, likelihood, u, inputs, targets, chunk_size)
    num_outputs_dims = len(variational_strategy(gp)._variational_distribution.batch_shape)
    return per_output.sum(tuple(range(-num_outputs_dims, 0))) if num_outputs_dims else per_output
