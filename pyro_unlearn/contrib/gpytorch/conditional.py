r"""The conditional p(f|u) of a sparse variational GP, and the likelihood of data given u."""

from __future__ import annotations

from dataclasses import dataclass

import gpytorch
import pyro.distributions as dist
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.lazy import LazyEvaluatedKernelTensor
from gpytorch.variational import VariationalStrategy
from linear_operator.operators import DiagLinearOperator, LinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky

from ...validation import check_finite, check_positive_int
from .strategy import variational_strategy

__all__ = [
    "Projection",
    "check_gp_data",
    "expected_log_prob",
    "gp_inputs",
    "inducing_log_likelihood",
    "inputs_of",
    "missing_allowed",
    "observed_cells",
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


def inputs_of(output: MultivariateNormal) -> torch.Tensor | None:
    """The inputs a GP's output q(f) = ``gp(x)`` was computed at, ``(*batch, N, D)``, read from
    the lazily evaluated kernel matrix GPyTorch keeps in its covariance (while
    ``gpytorch.settings.lazily_evaluate_kernels`` is on, its default); ``None`` where the output
    does not carry them (kernels evaluated eagerly, or a distribution not made by a GP call).

    Example:
        >>> inputs_of(MultivariateNormal(torch.zeros(2), torch.eye(2))) is None
        True
    """
    if not isinstance(output, MultivariateNormal):
        return None
    stack: list = [output.lazy_covariance_matrix]
    while stack:
        op = stack.pop()
        if isinstance(op, LazyEvaluatedKernelTensor):
            x1, x2 = op.x1, op.x2
            if x1.shape == x2.shape and x1.shape[-2] == output.event_shape[-1]:
                same = x1.data_ptr() == x2.data_ptr() and x1.stride() == x2.stride()
                if same or torch.equal(x1, x2):
                    return x1.detach()
            continue
        stack.extend(a for a in getattr(op, "_args", ()) if isinstance(a, LinearOperator))
    return None


def check_gp_data(
    strategy: VariationalStrategy,
    inputs: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    finite: bool = True,
    inputs_name: str = "inputs",
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
        inputs_name: what the errors call the inputs.

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
        hint = ""
        if inputs is not None and isinstance(inputs, torch.Tensor):
            n = gp_inputs(inputs).shape[-2]
            hint = f" = {(*batch, n)}"
            if tuple(targets.shape) == (n, *batch):
                hint += (
                    " (these are rows first: pass target.movedim(0, -1), y.T for one output dim)"
                )
        raise ValueError(
            f"target has shape {tuple(targets.shape)}: a GP of batch shape {tuple(batch)} takes "
            f"targets (*batch, N){hint}, GPyTorch's layout (that of gp(x).mean), one row per "
            "output"
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
            check_finite(inputs_name, x.movedim(-2, 0))
    if finite:
        if missing_allowed():
            targets = torch.where(torch.isnan(targets), 0.0, targets)
        check_finite("target", targets.movedim(-1, 0))


def missing_allowed() -> bool:
    """Whether NaN targets mark missing cells: GPyTorch's
    ``gpytorch.settings.observation_nan_policy("mask")`` (or ``"fill"``) is active."""
    return gpytorch.settings.observation_nan_policy.value() != "ignore"


def observed_cells(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(target, None)``, or under GPyTorch's ``observation_nan_policy("mask")``/``("fill")``
    the target with its NaN cells set to 0 and the mask of the others: a batch GP's
    output t of row i is left out (erased alone) where its target is NaN.

    Example:
        >>> with gpytorch.settings.observation_nan_policy("mask"):
        ...     observed_cells(torch.tensor([1.0, float("nan")]))
        (tensor([1., 0.]), tensor([ True, False]))
    """
    if not missing_allowed() or not target.is_floating_point():
        return target, None
    missing = torch.isnan(target)
    return target.masked_fill(missing, 0.0), ~missing


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
    hyperparameters held fixed (no gradient reaches them). Under GPyTorch's
    ``observation_nan_policy("mask")`` a NaN target scores 0 (:func:`observed_cells`)."""
    var = var.expand_as(mean)
    target, observed = observed_cells(target)
    params = [p for p in likelihood.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        with gpytorch.settings.debug(False), gpytorch.settings.observation_nan_policy("ignore"):
            # debug off: its shape checks don't know about particles; missing cells are masked
            f = MultivariateNormal(mean, DiagLinearOperator(var))
            log_p = likelihood.expected_log_prob(target, f)
            return log_p if observed is None else log_p * observed
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
