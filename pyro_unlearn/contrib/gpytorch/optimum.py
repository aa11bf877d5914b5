r"""How far q(u|D) is from the ELBO's optimum for the current hyperparameters, and one call that
puts it there: natural-gradient steps on all of D, in closed form."""

from __future__ import annotations

import warnings

import gpytorch
import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.likelihoods import _GaussianLikelihoodBase

from ...validation import check_positive_int
from .conditional import check_gp_data, expected_log_prob, gp_inputs, project
from .inducing import inducing_distribution, set_inducing_distribution
from .strategy import variational_strategy

__all__ = [
    "GAP_TOLERANCE",
    "PRECISION_TOLERANCE",
    "InducingGapWarning",
    "PrecisionWarning",
    "check_precision",
    "converge_inducing",
    "inducing_gap",
    "natural_step",
]

#: KL (nats) from q(u|D) to its optimum above which :func:`inducing_gap` warns.
GAP_TOLERANCE = 1e-3


#: ε·κ(Σ_D) above which :func:`check_precision` warns (measured: KL 0.25 nats between q(u|D)
#: computed in float32 and in float64 at ε·κ = 1.5·10⁻³, M = 100).
PRECISION_TOLERANCE = 1e-3


class PrecisionWarning(UserWarning):
    """q(u|D) is too ill-conditioned for its dtype: rounding alone moves it (and so what
    unlearning divides) by more than the erased data may; unlearn in float64."""


def check_precision(q: object, *, warn: bool = True, stacklevel: int = 2) -> float:
    r"""The relative rounding error of q(u|D) in its dtype, ε·κ(Σ_D): machine epsilon times the
    condition number of q(u|D)'s covariance (its largest over smallest eigenvalue), which grows
    with ``|D|`` (the data shrink Σ_D along the directions they determine, about as N/M). Measured
    with M = 100 on 1-D regression (σ = 0.1, lengthscale 0.5; KL to the float64 answer, the
    last two columns for 5 % erased at random):

    ====== ============= ===================== ================ ================
    N      ε·κ, float32  q(u|D) float32 vs 64  retrain float32  unlearn float32
    ====== ============= ===================== ================ ================
    300    4.9·10⁻⁴      0.075
    10³    1.5·10⁻³      0.25                  0.22             0.22
    3·10³  4.5·10⁻³      0.86
    10⁴    1.5·10⁻²      31                    2.0              24
    10⁵    0.24          1.5·10⁴               20               6.8·10³
    ====== ============= ===================== ================ ================

    so it warns above :data:`PRECISION_TOLERANCE` (10⁻³): float32, GPyTorch's default, is not
    enough past a few thousand points; float64 (ε = 2.2·10⁻¹⁶) is.

    Arguments:
        q: a GP (its q(u) now) or a frozen q(u|D).
        warn: warn :class:`PrecisionWarning` above the tolerance.
        stacklevel: the warning's, as :func:`warnings.warn` takes it.

    Returns:
        ε·κ (the largest over a batch GP's outputs), a float.

    Example::

        pug.check_precision(gp)  # warns for a float32 GP trained on 10⁴ points
    """
    cov = inducing_distribution(q).covariance_matrix
    eigenvalues = torch.linalg.eigvalsh(cov)
    kappa = eigenvalues[..., -1] / eigenvalues[..., 0].clamp_min(torch.finfo(cov.dtype).tiny)
    error = float(torch.finfo(cov.dtype).eps * kappa.max())
    if warn and error > PRECISION_TOLERANCE:
        warnings.warn(
            f"q(u|D) in {str(cov.dtype).removeprefix('torch.')} has relative rounding error "
            f"ε·κ = {error:.2g} (κ = {float(kappa.max()):.3g}, the condition number of its "
            f"covariance), above {PRECISION_TOLERANCE:g}: rounding alone moves q(u|D), so what is "
            "divided out is not p(D_e|u) (with M = 100, float32 q(u|D) was 31 nats from "
            "float64's at ε·κ = 0.015, 0.25 at 0.0015). Train and unlearn in float64: "
            "gp.double(), likelihood.double(), float64 data",
            PrecisionWarning,
            stacklevel=stacklevel,
        )
    return error


class InducingGapWarning(UserWarning):
    """q(u|D) is not at the ELBO's optimum for the GP's hyperparameters (where training loops
    leave it), so q(u|D)/p̃(D_e|u) is not q(u|D_r) and may not be a distribution."""


def natural_step(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_data: int | None = None,
    lr: float = 1.0,
    chunk_size: int = 4096,
) -> MultivariateNormal:
    r"""q(u) after one natural-gradient step of the ELBO on (``inputs``, ``targets``) from the GP's
    q(u) now, in closed form (what :class:`gpytorch.optim.NGD` at ``lr`` on all of the data
    gives, for any parameterisation of q(u)). With q(f_i) = N(μ_i, v_i), μ_i = c_i + b_iᵀm,
    v_i = k_i + b_iᵀSb_i and L_i(μ_i, v_i) = E_{q(f_i)}[log p(y_i|f_i)] (GPyTorch's
    ``expected_log_prob``; ρ = ``num_data``/n scales a sample of D):

    .. math:: \Lambda' = (1-r)\Lambda + r\Big(\Lambda_0 - 2\rho\sum_i b_i b_i^\top
              \tfrac{\partial L_i}{\partial v_i}\Big), \qquad
              \eta' = (1-r)\Lambda m + r\Big(\Lambda_0 m_0 + \rho\sum_i b_i
              \big(\tfrac{\partial L_i}{\partial \mu_i} - 2\tfrac{\partial L_i}{\partial v_i}
              b_i^\top m\big)\Big)

    with p(u) = N(m_0, Λ_0⁻¹), r = ``lr``. For a Gaussian likelihood at r = 1 this is the ELBO's
    optimum q*(u) (Titsias), whatever q(u) was; for others, a step towards it (Newton's, in
    natural parameters), which :func:`converge_inducing` repeats. Kernel, mean and likelihood
    hyperparameters and inducing inputs are held fixed; the data are taken in chunks.

    Arguments:
        gp: the GP (a supported ``ApproximateGP``); its q(u) is read, not changed.
        likelihood: its likelihood.
        inputs: D's inputs, ``(N, D)`` or ``(N,)``.
        targets: D's targets, ``(*batch, N)``.
        num_data: ``|D|`` when the data are a sample of it (default: all of it).
        lr: the step r ∈ (0, 1].
        chunk_size: points per chunk.

    Returns:
        q(u) after the step, a GPyTorch ``MultivariateNormal`` in the strategy's space.

    References:
        - J. Hensman, N. Fusi, N. D. Lawrence. Gaussian Processes for Big Data. UAI 2013.
        - H. Salimbeni, S. Eleftheriadis, J. Hensman. Natural Gradients in Practice:
          Non-Conjugate Variational Inference in Gaussian Process Models. AISTATS 2018.

    Example::

        q_star = pug.natural_step(gp, likelihood, x, y)  # Gaussian likelihood: the optimum
        pug.set_inducing_distribution(gp, q_star.mean, q_star.covariance_matrix)
    """
    strategy = variational_strategy(gp)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0.0 < lr <= 1.0:
        raise ValueError(f"lr must be a float in (0, 1], got {lr!r}")
    check_gp_data(strategy, inputs, targets)
    x = gp_inputs(inputs)
    n = x.shape[-2]
    rho = 1.0 if num_data is None else check_positive_int("num_data", num_data) / n
    q = inducing_distribution(gp)
    m, s = q.mean, q.covariance_matrix
    precision_sum = torch.zeros_like(s)  # −2 Σ b bᵀ ∂L/∂v
    eta_sum = torch.zeros_like(m)  # Σ b (∂L/∂μ − 2 ∂L/∂v bᵀm)
    prior = None
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            proj = project(strategy, x[..., start : start + chunk_size, :])
            if prior is None:
                prior = proj.prior()
            b = proj.a  # ∂E[f|u]/∂u, (*batch, M, b)
            if not proj.whitened:
                b = torch.linalg.solve_triangular(proj.chol.mT, b, upper=True)
            mean = proj.f_mean(m).detach().requires_grad_(True)
            var = (proj.var + (b * (s @ b)).sum(-2)).detach().requires_grad_(True)
            y = targets[..., start : start + chunk_size]
            with torch.enable_grad():
                total = expected_log_prob(likelihood, y, mean, var).sum()
                d_mean, d_var = torch.autograd.grad(total, (mean, var), allow_unused=True)
            d_mean = torch.zeros_like(mean) if d_mean is None else d_mean
            d_var = torch.zeros_like(var) if d_var is None else d_var
            bm = (b * m.unsqueeze(-1)).sum(-2)
            precision_sum -= 2.0 * (b * d_var.unsqueeze(-2)) @ b.mT
            eta_sum += (b * (d_mean - 2.0 * d_var * bm).unsqueeze(-2)).sum(-1)
    prior_precision = torch.cholesky_inverse(prior.scale_tril)
    target_precision = prior_precision + rho * precision_sum
    target_eta = (prior_precision @ prior.loc.unsqueeze(-1)).squeeze(-1) + rho * eta_sum
    if lr < 1.0:
        precision_now = torch.cholesky_inverse(torch.linalg.cholesky(s))
        target_precision = (1 - lr) * precision_now + lr * target_precision
        target_eta = (1 - lr) * (precision_now @ m.unsqueeze(-1)).squeeze(-1) + lr * target_eta
    target_precision = 0.5 * (target_precision + target_precision.mT)
    chol = torch.linalg.cholesky(target_precision)
    cov = torch.cholesky_inverse(chol)
    loc = torch.cholesky_solve(target_eta.unsqueeze(-1), chol).squeeze(-1)
    return MultivariateNormal(loc, 0.5 * (cov + cov.mT))


def inducing_gap(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_data: int | None = None,
    chunk_size: int = 4096,
    warn: bool = True,
    stacklevel: int = 2,
) -> float:
    r"""How far the GP's q(u) is from the ELBO's optimum for its current hyperparameters: the KL
    (nats, summed over a batch GP's outputs) from q(u) to q(u) after one natural-gradient step
    at lr 1 on (``inputs``, ``targets``) (:func:`natural_step`): the KL to the optimum itself
    for a Gaussian likelihood, a measure of the natural gradient's size (0 at the optimum)
    for others; on a sample of D, pass ``num_data`` = ``|D|``. Training loops (Adam on all
    parameters) leave q(u) short of it, then q(u|D)/p̃(D_e|u) is not q(u|D_r) and often not a
    distribution: converge q(u) first (:func:`converge_inducing`).

    Arguments:
        gp, likelihood: the trained GP and its likelihood.
        inputs, targets: D (or a sample of it), as :func:`natural_step` takes them.
        num_data: ``|D|`` when they are a sample.
        chunk_size: points per chunk.
        warn: warn :class:`InducingGapWarning` when the gap exceeds :data:`GAP_TOLERANCE`.
        stacklevel: the warning's, as :func:`warnings.warn` takes it.

    Returns:
        The KL, a float.

    Example::

        gap = pug.inducing_gap(gp, likelihood, x, y)  # warns above 1e-3 nats
    """
    q, step = (
        inducing_distribution(gp),
        natural_step(gp, likelihood, inputs, targets, num_data=num_data, chunk_size=chunk_size),
    )
    gap = float(torch.distributions.kl_divergence(q, step).sum())
    if warn and not gap <= GAP_TOLERANCE:
        exact = isinstance(likelihood, _GaussianLikelihoodBase)
        warnings.warn(
            f"q(u|D) is {gap:.3g} nats from "
            + ("the ELBO's optimum" if exact else "one natural-gradient step towards the optimum")
            + " for the GP's current hyperparameters (where training loops leave it): "
            "q(u|D)/p(D_e|u) is then not q(u|D_r), and often no distribution. Call "
            "pyro_unlearn.contrib.gpytorch.converge_inducing(gp, likelihood, x, y) before "
            "freezing (hyperparameters fixed; "
            + ("one step" if exact else "a few steps")
            + " of natural gradient at lr 1)",
            InducingGapWarning,
            stacklevel=stacklevel,
        )
    return gap


def converge_inducing(
    gp: gpytorch.models.ApproximateGP,
    likelihood: gpytorch.likelihoods.Likelihood,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    max_steps: int = 20,
    tol: float = 1e-8,
    lr: float = 1.0,
    chunk_size: int = 4096,
) -> float:
    """Put the GP's q(u) at the ELBO's optimum on all of D for its current hyperparameters, in
    place, before freezing q(u|D): :func:`natural_step` at ``lr`` until a step moves q(u) by
    less than ``tol`` nats (one step for a Gaussian likelihood, where the first lands on the
    optimum; a few for others). Kernel, mean, likelihood and inducing inputs stay as they are.

    Arguments:
        gp, likelihood: the trained GP and its likelihood; the GP's q(u) is overwritten.
        inputs, targets: all of D.
        max_steps: the most steps.
        tol: the KL (nats) of the last step below which it stops.
        lr: the step r ∈ (0, 1] (lower it if a non-Gaussian likelihood oscillates).
        chunk_size: points per chunk.

    Returns:
        The KL of the last step (below ``tol`` when converged).

    Warns:
        InducingGapWarning: when ``max_steps`` steps did not bring it below ``tol``.

    Example::

        pug.converge_inducing(gp, likelihood, x, y)  # q(u) at the optimum for D
        posterior = pug.freeze_inducing(gp)
    """
    max_steps = check_positive_int("max_steps", max_steps)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
        raise ValueError(f"tol must be a positive float, got {tol!r}")
    moved = float("inf")
    for _ in range(max_steps):
        step = natural_step(gp, likelihood, inputs, targets, lr=lr, chunk_size=chunk_size)
        moved = float(torch.distributions.kl_divergence(inducing_distribution(gp), step).sum())
        set_inducing_distribution(gp, step.mean, step.covariance_matrix)
        if moved < tol:
            return moved
    warnings.warn(
        f"converge_inducing: the last of {max_steps} natural-gradient steps still moved q(u) by "
        f"{moved:.3g} nats (tol {tol:g}): raise max_steps or lower lr",
        InducingGapWarning,
        stacklevel=2,
    )
    return moved
