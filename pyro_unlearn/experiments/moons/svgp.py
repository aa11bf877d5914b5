"""The moons classifier as a GPyTorch sparse variational GP, unlearned through ``PyroSVGP``."""

from __future__ import annotations

from typing import Any

import gpytorch
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from gpytorch.utils.quadrature import GaussHermiteQuadrature1D
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy
from linear_operator.operators import DiagLinearOperator

from pyro_unlearn.contrib.gpytorch import PyroSVGP, set_inducing_distribution

from .model import INVERSE_SQUARED_LENGTHSCALES, VARIANCE

__all__ = ["SVGP_PREFIX", "LogisticBernoulliLikelihood", "MoonsSVGP", "SVGPClassifier"]

#: The name prefix of the GPyTorch variant's Pyro sites (``svgp.u``, ``svgp.y``, ``svgp.data``).
SVGP_PREFIX = "svgp"


class LogisticBernoulliLikelihood(gpytorch.likelihoods.Likelihood):
    """p(y|f) = Bernoulli(sigmoid f), labels in {0, 1}: the authors' logistic link (GPyTorch's
    ``BernoulliLikelihood`` is the probit one).

    ``expected_log_prob`` E_{N(f; m, v)}[log p(y|f)] and ``marginal`` E_{N(f; m, v)}[sigmoid f]
    are ``num_nodes``-point Gauss–Hermite quadratures (GPyTorch's one-dimensional likelihoods'
    rule, its nodes computed in float64: GPyTorch's own are rounded to float32 first).

    Arguments:
        num_nodes: the quadrature's number of nodes.

    Example:
        >>> likelihood = LogisticBernoulliLikelihood().double()
        >>> f = gpytorch.distributions.MultivariateNormal(
        ...     torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64))
        >>> round(float(likelihood.marginal(f).probs), 6)  # E[sigmoid f] = 1/2 by symmetry
        0.5
    """

    def __init__(self, num_nodes: int = 32) -> None:
        super().__init__()
        self.quadrature = GaussHermiteQuadrature1D(num_nodes)
        nodes, weights = np.polynomial.hermite.hermgauss(num_nodes)
        self.quadrature.locations = torch.tensor(nodes, dtype=torch.float64)
        self.quadrature.weights = torch.tensor(weights, dtype=torch.float64)

    def forward(self, function_samples: torch.Tensor, *args: Any, **kwargs: Any):
        return torch.distributions.Bernoulli(logits=function_samples)

    def expected_log_prob(self, observations: torch.Tensor, function_dist, *args, **kwargs):
        def log_prob(f: torch.Tensor) -> torch.Tensor:
            return self.forward(f, *args, **kwargs).log_prob(observations)

        return self.quadrature(log_prob, function_dist)

    def log_marginal(self, observations: torch.Tensor, function_dist, *args, **kwargs):
        def prob(f: torch.Tensor) -> torch.Tensor:
            return self.forward(f).log_prob(observations).exp()

        return self.quadrature(prob, function_dist).log()

    def marginal(self, function_dist, *args: Any, **kwargs: Any):
        return torch.distributions.Bernoulli(probs=self.quadrature(torch.sigmoid, function_dist))


class MoonsSVGP(gpytorch.models.ApproximateGP):
    """The authors' GP in GPyTorch: zero mean, ``ScaleKernel(RBFKernel(ard_num_dims=2))`` with
    outputscale 4.7432 and lengthscales ℓ_d^{−1/2} (:func:`kernel`), all frozen; the inducing
    inputs fixed; a full-covariance ``CholeskyVariationalDistribution`` in the whitened
    ``VariationalStrategy`` with ``jitter_val=0`` (the authors used no jitter).

    Whitened, because that is GPyTorch's default and it is exactly the authors' prior: q(v) over
    v = L⁻¹ f(X_u) (L L^T = K_uu) against N(0, I) is q(u) = N(L m, L S L^T) against N(0, K_uu),
    and every number compared here (KLs, λ-thresholds, predictives) is invariant under that
    linear map. The ``UnwhitenedVariationalStrategy``'s prior would not be: it adds a fixed
    10⁻³ jitter to K_uu (``add_jitter()``'s default, whatever ``jitter_val`` says), against K_uu's
    smallest eigenvalue of 3·10⁻³.

    Arguments:
        inducing: the fixed inducing inputs X_u, shape (M, 2); the model takes their dtype and
            device.
    """

    def __init__(self, inducing: torch.Tensor) -> None:
        q = CholeskyVariationalDistribution(len(inducing))
        strategy = VariationalStrategy(
            self, inducing, q, learn_inducing_locations=False, jitter_val=0.0
        )
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2))
        self.to(inducing)  # dtype and device first: the values below are then set exactly
        self.covar_module.outputscale = inducing.new_tensor(VARIANCE)  # not rounded to float32
        ell = inducing.new_tensor(INVERSE_SQUARED_LENGTHSCALES)
        self.covar_module.base_kernel.lengthscale = ell.rsqrt().unsqueeze(0)
        self.mean_module.requires_grad_(False)
        self.covar_module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class SVGPClassifier(PyroSVGP):
    """The moons classifier as a GPyTorch sparse variational GP (:class:`MoonsSVGP`,
    :class:`LogisticBernoulliLikelihood`) through :class:`~pyro_unlearn.contrib.gpytorch.PyroSVGP`:
    calling it is ``PyroSVGP.model`` (sites ``<prefix>.u``, the whitened inducing values, and
    ``<prefix>.y`` in the plate ``<prefix>.data``), the model that training and unlearning use.

    The one difference from the authors' model: given u, the SVGP's f(x) keeps the conditional
    variance c(x) = k(x, x) − k(x, X_u) K_uu⁻¹ k(X_u, x) (the authors' logit is the conditional
    mean only), so its per-point likelihood is E_{N(f; a_x·u, c(x))}[log sigmoid(±f)] and its
    predictive p(y=1|x, u) = E[sigmoid f] (:meth:`predictive`, whose observed site is ``"y"`` in
    plate ``"data"`` as the authors' model's). On the moons c(x) has median 0.017 and maximum 1.2
    at the data. ``scale_tril``, :meth:`projection` and :meth:`conditional_variance` (computed
    from GPyTorch's kernel) let :func:`gaussian_vi` find this model's exact optimum.

    Arguments:
        inducing: the fixed inducing inputs X_u, shape (M, 2).
        name_prefix: the prefix of the Pyro sites.

    References:
        J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
        Classification. AISTATS 2015.
    """

    def __init__(self, inducing: torch.Tensor, name_prefix: str = SVGP_PREFIX) -> None:
        gp = MoonsSVGP(inducing)
        super().__init__(gp, LogisticBernoulliLikelihood().to(inducing), name_prefix)
        self.inducing = inducing
        self.jitter = gp.variational_strategy.jitter_val
        with torch.no_grad():
            k_uu = gp.covar_module(inducing).to_dense()
        self.scale_tril = torch.linalg.cholesky(k_uu)  # L, L L^T = K_uu: u = f(X_u) = L v

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x, y)

    def projection(self, x: torch.Tensor) -> torch.Tensor:
        """A = K_xu K_uu⁻¹, shape (N, M): E[f(x)|u] = A u, u = f(X_u) (unwhitened)."""
        with torch.no_grad():
            k_ux = self.gp.covar_module(self.inducing, x).to_dense()
        return torch.cholesky_solve(k_ux, self.scale_tril).mT

    def conditional_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var[f(x)|u] = k(x, x) − k(x, X_u) K_uu⁻¹ k(X_u, x), shape (N,)."""
        with torch.no_grad():
            k_ux = self.gp.covar_module(self.inducing, x).to_dense()
            k_xx = self.gp.covar_module(x, diag=True)
        return (k_xx - (self.projection(x) * k_ux.mT).sum(-1)).clamp_min(0.0)

    def whitened(self, loc: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moments of v = L⁻¹ u (this GP's q) from those of u = f(X_u) (the authors')."""
        inv = torch.linalg.solve_triangular(
            self.scale_tril, torch.eye(len(loc)).to(loc), upper=False
        )
        return inv @ loc, inv @ cov @ inv.mT

    def unwhitened(self, loc: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moments of u = L v from those of v."""
        return self.scale_tril @ loc, self.scale_tril @ cov @ self.scale_tril.mT

    def set_q(self, loc: torch.Tensor, cov: torch.Tensor) -> None:
        """Set this GP's q(v) = N(loc, cov) (whitened), marking it initialised."""
        set_inducing_distribution(self.gp, loc, cov)

    def predictive(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The predictive model for the metrics and figures: ``<prefix>.u`` ~ N(0, I), then
        y ~ Bernoulli(E_{N(f; a_x·u, c(x))}[sigmoid f]) at site ``"y"`` in plate ``"data"``."""
        a = self.projection(x) @ self.scale_tril  # E[f(x)|v] = A L v
        var = self.conditional_variance(x)
        eye = torch.eye(len(self.inducing), dtype=x.dtype, device=x.device)
        v = pyro.sample(
            self.guide.site, dist.MultivariateNormal(torch.zeros_like(eye[0]), scale_tril=eye)
        )
        mean = (a * v).sum(-1)  # v (..., 1, M) against (N, M)
        with gpytorch.settings.debug(False):  # its shape checks don't know about particles
            f = gpytorch.distributions.MultivariateNormal(
                mean, DiagLinearOperator(var.expand_as(mean))
            )
            probs = self.likelihood.marginal(f).probs
        with pyro.plate("data", x.shape[-2]):
            return pyro.sample("y", dist.Bernoulli(probs=probs), obs=y)
