"""q(u|D) on the moons: the exact Gaussian-VI optimum, the retrained reference and the model
variants that run them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import gpytorch
import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_unlearn as pu
from pyro_unlearn.contrib.gpytorch import inducing_distribution
from pyro_unlearn.experiments.datasets import MoonsData
from pyro_unlearn.guides import read_gaussian, write_gaussian

from .model import SparseGPClassifier
from .svgp import SVGP_PREFIX, SVGPClassifier

__all__ = [
    "MODELS",
    "ModelVariant",
    "exact_optimum",
    "gaussian_entropy",
    "gaussian_vi",
    "retrain_reference",
    "svgp_exact_optimum",
    "svgp_moments",
    "train_full_posterior",
    "train_svgp_posterior",
]


def _whitened_start(
    chol_k: torch.Tensor, x: torch.Tensor, loc: torch.Tensor | None, scale_tril: torch.Tensor | None
) -> list[torch.Tensor]:
    """L-BFGS's leaves ``[m, log diag L_v, strictly lower L_v]`` of q(v) = N(m, L_v L_vᵀ), v the
    whitened u = L_K v, from q(u) = N(loc, scale_tril scale_trilᵀ) (default: the prior)."""
    m0 = x.new_zeros(len(chol_k)) if loc is None else loc
    l0 = chol_k if scale_tril is None else scale_tril
    m0 = torch.linalg.solve_triangular(chol_k, m0.unsqueeze(-1), upper=False).squeeze(-1)
    l0 = torch.linalg.solve_triangular(chol_k, l0, upper=False)  # lower-triangular again
    m = m0.detach().clone().contiguous().requires_grad_(True)
    log_diag = l0.diagonal().log().detach().clone().requires_grad_(True)
    lower = l0.tril(-1).detach().clone().contiguous().requires_grad_(True)
    return [m, log_diag, lower]


def _negative_elbo(
    a: torch.Tensor,
    extra: torch.Tensor | None,
    y: torch.Tensor,
    params: list[torch.Tensor],
    num_nodes: int,
) -> Callable[[], torch.Tensor]:
    """−ELBO of q(v) = N(m, L_v L_vᵀ) (``params`` as :func:`_whitened_start` makes them) for
    logits a_n·v (+ noise of variance ``extra``), each E[log σ(±f)] by Gauss–Hermite."""
    m, log_diag, lower = params
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    nodes, weights = a.new_tensor(nodes), a.new_tensor(weights / weights.sum())
    sign = 2 * y - 1

    def negative_elbo() -> torch.Tensor:
        chol = lower.tril(-1) + torch.diag_embed(log_diag.exp())
        if extra is None:
            mean, sd = a @ m, (a @ chol).norm(dim=-1)
        else:
            mean, sd = a @ m, ((a @ chol).square().sum(-1) + extra).sqrt()
        f = mean.unsqueeze(-1) + sd.unsqueeze(-1) * nodes
        expected = (torch.nn.functional.logsigmoid(sign.unsqueeze(-1) * f) @ weights).sum()
        # KL(N(m, LLᵀ) ‖ N(0, I)) in whitened coordinates equals KL(q(u) ‖ N(0, K_uu))
        kl = 0.5 * (chol.square().sum() + m.square().sum() - len(m)) - log_diag.sum()
        return kl - expected

    return negative_elbo


def _lbfgs(
    objective: Callable[[], torch.Tensor], params: list[torch.Tensor], max_iter: int, tolerance
) -> tuple[float, float, int]:
    """Minimise ``objective`` over ``params`` by L-BFGS (strong Wolfe line search) until the
    gradient's largest entry is below ``tolerance``: ``(loss, largest |gradient|, iterations)``."""
    optimizer = torch.optim.LBFGS(
        params,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-15,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    loss = closure()
    gradient = max(float(p.grad.abs().max()) for p in params)
    return float(loss.detach()), gradient, optimizer.state[params[0]]["n_iter"]


def gaussian_vi(
    model: SparseGPClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    loc: torch.Tensor | None = None,
    scale_tril: torch.Tensor | None = None,
    *,
    num_nodes: int = 32,
    max_iter: int = 1000,
    tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The maximiser of the ELBO over full-covariance Gaussians q(u) = N(m, S):

        ELBO = Σ_n E_{f ~ N(a_n·m, a_nᵀ S a_n)}[log σ((2y_n − 1) f)] − KL(q(u) ‖ N(0, K_uu))

    with A = K_xu K_uu⁻¹ (rows a_n) and each expectation by ``num_nodes``-point Gauss–Hermite
    quadrature (as GPflow's SVGP computes it). A ``model`` with a ``conditional_variance(x)``
    method (:class:`SVGPClassifier`: k(x, x) − k(x, X_u) K_uu⁻¹ k(X_u, x)) adds it to each f's
    variance: the SVGP's ELBO, in the coordinates u = f(X_u). L-BFGS runs in whitened
    coordinates (u = L_K v, K_uu = L_K L_Kᵀ; the same objective, better conditioned) until the
    gradient's largest entry is below ``tolerance``.

    Arguments:
        model: a model with ``scale_tril`` (L_K) and ``projection(x)`` (A), such as
            :class:`SparseGPClassifier`.
        x: inputs, shape (N, 2).
        y: labels in {0, 1}, shape (N,).
        loc: the start's mean (default: the prior's, 0).
        scale_tril: the start's covariance factor (default: the prior's, L_K).
        num_nodes: quadrature nodes per expectation.
        max_iter: the most L-BFGS iterations.
        tolerance: the gradient's largest entry at convergence.

    Returns:
        ``(loc, cov, info)``: the optimum's moments and ``info`` holding ``negative_elbo``,
        ``max_abs_gradient``, ``iterations``, ``converged``, ``seconds`` and ``num_nodes``.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (the authors maximise the same ELBO by 30 000 Monte-Carlo Adam steps).

    Example::

        data = moons()
        loc, cov, info = gaussian_vi(SparseGPClassifier(data.inducing), data.x, data.y)
        info["converged"]  # True, in about a second
    """
    start = time.perf_counter()
    chol_k = model.scale_tril
    a = model.projection(x) @ chol_k  # logits = A u = (A L_K) v
    extra = getattr(model, "conditional_variance", None)
    extra = None if extra is None else extra(x)  # the SVGP's Var[f(x)|u]; none for the authors'
    params = _whitened_start(chol_k, x, loc, scale_tril)
    objective = _negative_elbo(a, extra, y, params, num_nodes)
    loss, gradient, iterations = _lbfgs(objective, params, max_iter, tolerance)
    m, log_diag, lower = params
    with torch.no_grad():
        chol = chol_k @ (lower.tril(-1) + torch.diag_embed(log_diag.exp()))
        loc = chol_k @ m
    info = {
        "negative_elbo": loss,
        "max_abs_gradient": gradient,
        "iterations": iterations,
        "converged": gradient < tolerance,
        "seconds": time.perf_counter() - start,
        "num_nodes": num_nodes,
    }
    return loc, chol @ chol.mT, info


def gaussian_entropy(cov: torch.Tensor) -> float:
    """H[N(·, Σ)] = ½ log det(2πe Σ).

    Example:
        >>> round(gaussian_entropy(torch.eye(2)), 4)  # log(2πe)
        2.8379
    """
    return 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))


def train_full_posterior(
    model: SparseGPClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_nodes: int = 32,
    check_particles: int = 4096,
) -> tuple[AutoMultivariateNormal, dict]:
    """q(u|D) as an ``AutoMultivariateNormal`` holding the exact Gaussian-VI optimum.

    Arguments:
        model: the authors' model.
        x: inputs, shape (N, 2).
        y: labels, shape (N,).
        num_nodes: :func:`gaussian_vi`'s quadrature nodes.
        check_particles: draws of Pyro's Monte-Carlo ELBO at the optimum, a check.

    Returns:
        ``(guide, info)``: :func:`gaussian_vi`'s info plus ``mc_negative_elbo`` (Pyro's
        ``Trace_ELBO`` loss at the optimum: it must match the quadrature's) and ``entropy``.
    """
    loc, cov, info = gaussian_vi(model, x, y, num_nodes=num_nodes)
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    write_gaussian(guide, loc, cov)
    elbo = Trace_ELBO(num_particles=check_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        info["mc_negative_elbo"] = float(elbo.loss(model, guide, x, y))
    info["entropy"] = gaussian_entropy(cov)
    return guide, info


def svgp_moments(guide) -> tuple[torch.Tensor, torch.Tensor]:
    """The (loc, cov) of q(v), copies, from a live ``PyroSVGP`` guide or a frozen posterior of
    one (the whitened inducing values)."""
    source = guide if isinstance(guide, pu.FrozenPosterior) else guide.strategy.model
    q = inducing_distribution(source)
    return q.mean.clone(), q.covariance_matrix.clone()


def train_svgp_posterior(
    model: SVGPClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_nodes: int = 32,
    check_particles: int = 4096,
) -> tuple[torch.nn.Module, dict]:
    """q(v|D) of the SVGP: the exact optimum of GPyTorch's variational ELBO over full-covariance
    Gaussians, found by :func:`gaussian_vi` with the SVGP's conditional variance and written into
    the GP's ``CholeskyVariationalDistribution`` (whitened).

    Arguments:
        model: the GPyTorch variant.
        x: inputs, shape (N, 2).
        y: labels, shape (N,).
        num_nodes: :func:`gaussian_vi`'s quadrature nodes.
        check_particles: draws of Pyro's Monte-Carlo ELBO at the optimum, a check.

    Returns:
        ``(guide, info)``: the ``PyroSVGP`` guide and :func:`gaussian_vi`'s info plus
        ``gpytorch_negative_elbo`` and ``gpytorch_max_abs_gradient`` (GPyTorch's own
        ``VariationalELBO``, times N, and its gradient in the variational parameters: it
        vanishes when GPyTorch's model is the one solved), ``mc_negative_elbo`` (Pyro's
        Monte-Carlo ``Trace_ELBO`` on the ``PyroSVGP`` pair) and the ``entropy`` of q(v).

    References:
        J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
        Classification. AISTATS 2015.
    """
    loc, cov, info = gaussian_vi(model, x, y, num_nodes=num_nodes)
    model.set_q(*model.whitened(loc, cov))
    gp = model.gp
    gp.train()
    elbo = gpytorch.mlls.VariationalELBO(model.likelihood, gp, num_data=len(y))
    params = list(gp.variational_parameters())
    loss = -elbo(gp(x), y) * len(y)
    grads = torch.autograd.grad(loss, params)
    info["gpytorch_negative_elbo"] = float(loss.detach())
    info["gpytorch_max_abs_gradient"] = max(float(g.abs().max()) for g in grads)
    mc = Trace_ELBO(num_particles=check_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        info["mc_negative_elbo"] = float(mc.loss(model, model.guide, x, y))
    info["entropy"] = gaussian_entropy(svgp_moments(model.guide)[1])
    return model.guide, info


def exact_optimum(
    model: SparseGPClassifier, x: torch.Tensor, y: torch.Tensor, loc, cov
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian-VI optimum (loc, cov) of the authors' model on (x, y), from N(loc, cov)."""
    loc, cov, _ = gaussian_vi(model, x, y, loc, torch.linalg.cholesky(cov))
    return loc, cov


def svgp_exact_optimum(
    model: SVGPClassifier, x: torch.Tensor, y: torch.Tensor, loc, cov
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian-VI optimum (loc, cov) of the SVGP's q(v) on (x, y), from q(v) = N(loc, cov)."""
    loc, cov = model.unwhitened(loc, cov)
    loc, cov, _ = gaussian_vi(model, x, y, loc, torch.linalg.cholesky(cov))
    return model.whitened(loc, cov)


def retrain_reference(
    model: Callable,
    guide: Callable,
    x_r: torch.Tensor,
    y_r: torch.Tensor,
    *,
    num_steps: int,
    num_particles: int,
    lr: float,
    decay: float,
    progress: bool,
) -> pu.RetrainResult:
    """The reference q(u|D_r): :func:`pyro_unlearn.retrain` warm-started from q(u|D) (the
    authors' choice), ClippedAdam at ``lr`` decaying by the factor ``decay`` over ``num_steps``
    steps, ``converged`` reporting whether the second half of the loss trace was flat."""
    return pu.retrain(
        model,
        guide,
        x_r,
        y_r,
        init="posterior",
        num_steps=num_steps,
        window=max(num_steps // 2, 1),
        optim=pyro.optim.ClippedAdam({"lr": lr, "lrd": decay ** (1 / max(num_steps, 1))}),
        num_particles=num_particles,
        progress=progress,
    )


@dataclass(frozen=True)
class ModelVariant:
    """One way of writing the moons model.

    Arguments:
        description: what it is, for the results' settings.
        build: ``build(data)``, the Pyro model ``model(x, y=None)`` (its data plate at dim −1)
            that training and unlearning use.
        fit: ``fit(model, x, y)``, q(u|D) as a trained Gaussian guide (a PyroModule) and a dict
            describing the fit.
        optimum: ``optimum(model, x, y, loc, cov)``, if given, the exact Gaussian-VI (loc, cov)
            of the latent ``site`` on other data, started at (loc, cov) (to measure how
            converged the retrained reference is).
        site: the latent site.
        moments: ``moments(guide)``, the (loc, cov) of a live or frozen guide's q(site).
        predictive: ``predictive(model)``, if given, the Pyro model whose observed site ``"y"``
            (Bernoulli, plate ``"data"``) the metrics and figures read (default: the model).
    """

    description: str
    build: Callable[[MoonsData], Callable]
    fit: Callable[..., tuple[torch.nn.Module, dict]]
    optimum: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    site: str = "u"
    moments: Callable[..., tuple[torch.Tensor, torch.Tensor]] = read_gaussian
    predictive: Callable[[Callable], Callable] | None = None


#: The model variants, by the key their rows carry in the ``guide`` column.
MODELS: dict[str, ModelVariant] = {
    "mvn": ModelVariant(
        "the authors' sparse-GP classifier in plain Pyro, full-covariance Gaussian q(u)",
        lambda data: SparseGPClassifier(data.inducing),
        train_full_posterior,
        exact_optimum,
    ),
    "gpytorch": ModelVariant(
        "the same classifier as a GPyTorch sparse variational GP (whitened, logistic "
        "likelihood, fixed kernel), through PyroSVGP",
        lambda data: SVGPClassifier(data.inducing, SVGP_PREFIX),
        train_svgp_posterior,
        svgp_exact_optimum,
        site=f"{SVGP_PREFIX}.u",
        moments=svgp_moments,
        predictive=lambda model: model.predictive,
    ),
}
