"""Sparse-GP classification on the two moons (EXPERIMENTS.md §4; the paper's Sec. 4.1, Fig. 2,
Appendix E–F).

The authors' model, in plain Pyro: 20 fixed inducing inputs X_u, a fixed squared-exponential
kernel k(x, x') = 4.7432 · exp(−½ Σ_d ℓ_d (x_d − x'_d)²) with ℓ = (2.4232, 1.8230) (ℓ multiplies
the squared distance), the inducing values u ~ N(0, K_uu) as the only latent, the logit
f(x) = k(x, X_u) K_uu⁻¹ u (the conditional mean only) and y ~ Bernoulli(sigmoid f(x)); a
full-covariance Gaussian q(u). No jitter: K_uu's smallest eigenvalue is 3·10⁻³ and its Cholesky
succeeds in float32 and float64 (a jitter would be added, and recorded, only if it failed).

Choices (EXPERIMENTS.md's common protocol otherwise):

* q(u|D) is the **exact optimum of the ELBO over full-covariance Gaussians**: f(x_n) is linear in
  u, so each expected log-likelihood E_q[log σ(±f(x_n))] is a 1-D Gaussian integral, computed by
  Gauss–Hermite quadrature (as GPflow's SVGP does), and the ELBO is maximised by L-BFGS to a
  vanishing gradient in about a second. The authors ran Adam for 30 000 Monte-Carlo steps; the
  objective is the same. The result records the Monte-Carlo ELBO at the optimum as a check.
* The reference q(u|D_r) is ``pu.retrain`` (Monte-Carlo ELBO, ClippedAdam, the learning rate
  decaying a hundredfold) warm-started from q(u|D), the authors' choice; how far it ended from
  the exact optimum on D_r (the same quadrature) is recorded, as a parameter KL and as the
  predictive KL it adds to every number.
* Unlearning (``pu.lambda_sweep`` → ``pu.forget``) runs from q(u|D) for a fixed number of steps,
  as the authors did, with ClippedAdam, the learning rate decaying tenfold over the run. The
  rKL's loss is a self-normalised importance-sampling estimate whose noise hides its slow
  progress from a flatness test (it would stop after a few hundred steps with the KL still
  falling), so the library's rule only reports, in ``converged``, whether the second half of
  the run's loss trace was flat against the first (the same for the retraining).
* Metric: the averaged predictive KL[q_retrained(y|x) ‖ q_unlearned(y|x)] over D_e and D_r,
  each predictive the Monte-Carlo mean over ``num_eval_samples`` u-samples (authors: 100); its
  noise floor (the same KL between two evaluations of the retrained posterior) at our sample
  count and at the authors' 100; the entropy reduction H[q(u|D_r)] − H[q(u|D)] (closed-form
  Gaussian entropies).
* Membership inference (not in the paper; :func:`~pyro_unlearn.metrics.membership_inference`):
  members are D_e, non-members fresh points of the same generator (``make_moons(noise=0.2)``,
  ``random_state = seed + 1``; the data's is 0), never trained on. The ``mia_*`` columns take
  the non-members **matched** to D_e by the scenario's selection rule (sorted: x₀ at least D_e's
  smallest; partial/large/full: class 1 and that x₀; random: any), so that a posterior that
  never saw D_e scores 0.5 up to noise: they measure membership. The ``mia_population_*``
  columns take unfiltered draws: for the structured erasures they also measure how well the
  posterior fits D_e's region, not membership alone. Loss-threshold and logistic attacks
  (features: per-point loss and predictive entropy), balanced, 5-fold, ``mia_repeats``
  resamples; with |D_e| = 20 their noise is large (an AUC's sd is about 0.07).

The model variants are the entries of :data:`MODELS`; ``run(models=(...))`` reports each under
its key in the rows' ``guide`` column:

* ``"mvn"``: the authors' model above in plain Pyro (:class:`SparseGPClassifier`), an
  ``AutoMultivariateNormal`` q(u).
* ``"gpytorch"``: the same classifier as a GPyTorch sparse variational GP
  (:class:`SVGPClassifier`): the same fixed kernel, zero mean and inducing inputs, a whitened
  ``VariationalStrategy`` (``jitter_val=0``) with a ``CholeskyVariationalDistribution`` over
  v = L⁻¹ u (L L^T = K_uu, so q(v) is a full-covariance q(u) and every KL, λ-threshold and
  predictive is the same in either coordinates), and a logistic Bernoulli likelihood
  (:class:`LogisticBernoulliLikelihood`; GPyTorch's own is probit). Its q(v|D) is the same exact
  Gaussian-VI optimum (:func:`gaussian_vi`, with the SVGP's conditional variance), checked
  against GPyTorch's own ``VariationalELBO`` (value and vanishing gradient); unlearning goes
  through :class:`~pyro_unlearn.contrib.gpytorch.PyroSVGP` and the same ``pu.lambda_sweep`` as
  the plain model. The one modelling difference: the SVGP keeps Var[f(x)|u] (median 0.017, at
  most 1.2 at the data), which the authors' logit drops; the two q(u|D) are 0.003 nats apart.
  Its ``entropy`` (of q(v)) differs from the plain q(u)'s by log det L; entropy reductions and
  KLs do not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gpytorch
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from gpytorch.likelihoods.likelihood import _OneDimensionalLikelihood
from gpytorch.utils.quadrature import GaussHermiteQuadrature1D
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy
from linear_operator.operators import DiagLinearOperator
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from tqdm import tqdm

import pyro_unlearn as pu

from ..contrib.gpytorch import PyroSVGP, inducing_distribution, set_inducing_distribution
from ..guides import read_gaussian, write_gaussian
from ..metrics import (
    MembershipAttack,
    gaussian_kl,
    mean_and_std,
    membership_attack,
    membership_inference,
    predictive_distribution,
    predictive_kl,
)
from ..posterior import FrozenPosterior
from ..sweep import LAMBDAS
from . import json_safe
from .datasets import MOONS_SCENARIOS, MoonsData, moons
from .machine import machine_info
from .membership import (
    compare,
    compared_posteriors,
    logistic_log_predictive,
    loss_and_entropy,
    summarise,
)

__all__ = [
    "AUTHORS",
    "DEMO",
    "MODELS",
    "MIA_STUDY_METRICS",
    "MIA_STUDY_QUICK",
    "QUICK",
    "LogisticBernoulliLikelihood",
    "ModelVariant",
    "MoonsSVGP",
    "SVGPClassifier",
    "SVGP_PREFIX",
    "SparseGPClassifier",
    "gaussian_entropy",
    "gaussian_vi",
    "kernel",
    "membership_study",
    "mia_nonmembers",
    "plot_data",
    "plot_kl",
    "plot_membership_study",
    "plot_surfaces",
    "predictive_surface",
    "quadrature_predictive",
    "run",
    "run_scenarios",
    "train_full_posterior",
    "train_svgp_posterior",
]

#: The name prefix of the GPyTorch variant's Pyro sites (``svgp.u``, ``svgp.y``, ``svgp.data``).
SVGP_PREFIX = "svgp"

#: The authors' fixed kernel: variance and ℓ (inverse squared lengthscales).
VARIANCE = 4.7432
INVERSE_SQUARED_LENGTHSCALES = (2.4232, 1.8230)

#: The authors' numbers (EXPERIMENTS.md; sorted erasure, full-covariance Gaussian, 30 000 steps):
#: averaged predictive KL to the retrained posterior, ``(D_e, D_r)`` per method and λ.
AUTHORS = {
    "eubo": {
        0.5: (0.442, 0.0024),
        0.1: (0.458, 0.0024),
        1e-3: (0.406, 0.0025),
        1e-5: (0.228, 0.0015),
        1e-9: (0.072, 0.0012),
        0.0: (3.45, 0.081),
    },
    "rkl": {
        0.5: (0.455, 0.0024),
        0.1: (0.451, 0.0025),
        1e-3: (0.359, 0.0025),
        1e-5: (0.129, 0.0016),
        1e-9: (0.025, 0.0009),
        0.0: (0.025, 0.0010),
    },
    "full": {1.0: (0.449, 0.0022)},
}

#: Settings of a short run (``--quick``, the test suite): the same pipeline, far fewer steps.
QUICK = dict(
    lambdas=(1e-9, 0.0),
    retrain_steps=800,
    retrain_particles=64,
    unlearn_steps=300,
    num_particles=256,
    lr=0.1,
    num_eval_samples=1000,
)

#: Settings of ``pyro-unlearn demo``: the full λ grid in under two minutes on 2 CPU cores.
DEMO = dict(
    retrain_steps=1000,
    unlearn_steps=600,
    num_particles=512,
    lr=0.1,
)


def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The authors' k(a_i, b_j) = 4.7432 · exp(−½ Σ_d ℓ_d (a_id − b_jd)²), shape (len(a), len(b)).

    Example::

        >>> kernel(torch.zeros(1, 2), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        tensor([[4.7432, 1.4121]])
    """
    ell = a.new_tensor(INVERSE_SQUARED_LENGTHSCALES)
    return VARIANCE * torch.exp(-0.5 * ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2 * ell).sum(-1))


class SparseGPClassifier:
    """The authors' sparse-GP classifier as a Pyro model ``model(x, y=None)``: u ~ N(0, K_uu),
    y ~ Bernoulli(logits = K_xu K_uu⁻¹ u) in the plate ``"data"``. Particle-vectorised: a u of
    shape (..., 1, M) gives logits of shape (..., N).

    Example::

        >>> data = pu.datasets.moons()
        >>> model = SparseGPClassifier(data.inducing)
        >>> model.jitter, model(data.x).shape
        (0.0, torch.Size([100]))
    """

    def __init__(self, inducing: torch.Tensor) -> None:
        self.inducing = inducing
        k_uu = kernel(inducing, inducing)
        eye = torch.eye(len(inducing), dtype=inducing.dtype, device=inducing.device)
        self.jitter = 0.0  # the authors used none; the smallest that works if Cholesky fails
        scale_tril, info = torch.linalg.cholesky_ex(k_uu)
        while info:
            self.jitter = self.jitter * 10 or 1e-8 * VARIANCE
            scale_tril, info = torch.linalg.cholesky_ex(k_uu + self.jitter * eye)
        self.scale_tril = scale_tril  # Cholesky factor of K_uu (+ jitter)

    def projection(self, x: torch.Tensor) -> torch.Tensor:
        """A = K_xu K_uu⁻¹, shape (N, M): the logits are A u."""
        return torch.cholesky_solve(kernel(self.inducing, x), self.scale_tril).mT

    def prior(self) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(
            self.scale_tril.new_zeros(len(self.inducing)), scale_tril=self.scale_tril
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        u = pyro.sample("u", self.prior())
        logits = (self.projection(x) * u).sum(-1)  # u (..., 1, M) against A (N, M)
        with pyro.plate("data", x.shape[-2]):
            return pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


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
    quadrature. A ``model`` with a ``conditional_variance(x)`` method (:class:`SVGPClassifier`:
    the sparse variational GP's k(x, x) − k(x, X_u) K_uu⁻¹ k(X_u, x)) adds it to each f's
    variance: the SVGP's ELBO, in the coordinates u = f(X_u). L-BFGS, from ``(loc,
    scale_tril)`` (default: the prior), runs in whitened coordinates (u = L_K v, K_uu = L_K L_Kᵀ;
    the same objective, better conditioned) until the gradient's largest entry is below
    ``tolerance``. Returns ``(loc, cov, info)``, info holding
    the negative ELBO, the final gradient, iterations, seconds and ``converged``.
    """
    start = time.perf_counter()
    chol_k = model.scale_tril
    a = model.projection(x) @ chol_k  # logits = A u = (A L_K) v
    extra = getattr(model, "conditional_variance", None)
    extra = None if extra is None else extra(x)  # the SVGP's Var[f(x)|u]; none for the authors'
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    nodes, weights = x.new_tensor(nodes), x.new_tensor(weights / weights.sum())
    sign = 2 * y - 1
    m0 = x.new_zeros(len(chol_k)) if loc is None else loc
    l0 = chol_k if scale_tril is None else scale_tril
    m0 = torch.linalg.solve_triangular(chol_k, m0.unsqueeze(-1), upper=False).squeeze(-1)
    l0 = torch.linalg.solve_triangular(chol_k, l0, upper=False)  # lower-triangular again
    m = m0.detach().clone().contiguous().requires_grad_(True)
    log_diag = l0.diagonal().log().detach().clone().requires_grad_(True)
    lower = l0.tril(-1).detach().clone().contiguous().requires_grad_(True)
    params = [m, log_diag, lower]

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
        loss = negative_elbo()
        loss.backward()
        return loss

    optimizer.step(closure)
    loss = closure()
    gradient = max(float(p.grad.abs().max()) for p in params)
    with torch.no_grad():
        chol = chol_k @ (lower.tril(-1) + torch.diag_embed(log_diag.exp()))
        loc = chol_k @ m
    info = {
        "negative_elbo": float(loss.detach()),
        "max_abs_gradient": gradient,
        "iterations": optimizer.state[optimizer._params[0]]["n_iter"],
        "converged": gradient < tolerance,
        "seconds": time.perf_counter() - start,
        "num_nodes": num_nodes,
    }
    return loc, chol @ chol.mT, info


def gaussian_entropy(cov: torch.Tensor) -> float:
    """H[N(·, Σ)] = ½ log det(2πe Σ)."""
    return 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))


def train_full_posterior(
    model: SparseGPClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_nodes: int = 32,
    check_particles: int = 4096,
) -> tuple[AutoMultivariateNormal, dict]:
    """q(u|D) as an ``AutoMultivariateNormal`` holding the exact Gaussian-VI optimum
    (:func:`gaussian_vi`). ``info`` adds ``mc_negative_elbo``, Pyro's Monte-Carlo Trace_ELBO
    loss at the optimum over ``check_particles`` draws (it must match the quadrature's)."""
    loc, cov, info = gaussian_vi(model, x, y, num_nodes=num_nodes)
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    write_gaussian(guide, loc, cov)
    elbo = Trace_ELBO(num_particles=check_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        info["mc_negative_elbo"] = float(elbo.loss(model, guide, x, y))
    info["entropy"] = gaussian_entropy(cov)
    return guide, info


# -- the same classifier as a GPyTorch sparse variational GP -----------------------------------
class LogisticBernoulliLikelihood(_OneDimensionalLikelihood):
    """p(y|f) = Bernoulli(sigmoid f), labels in {0, 1}: the authors' logistic link (GPyTorch's
    ``BernoulliLikelihood`` is the probit one). ``expected_log_prob`` E_{N(f; m, v)}[log p(y|f)]
    and ``marginal`` E_{N(f; m, v)}[sigmoid f] by ``num_nodes``-point Gauss–Hermite quadrature
    (its nodes computed in float64: GPyTorch's own are rounded to float32 first).

    Example::

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

    def forward(self, function_samples: torch.Tensor, *args, **kwargs):
        return torch.distributions.Bernoulli(logits=function_samples)

    def marginal(self, function_dist, *args, **kwargs):
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


def train_svgp_posterior(
    model: SVGPClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_nodes: int = 32,
    check_particles: int = 4096,
) -> tuple[torch.nn.Module, dict]:
    """q(v|D) of the SVGP: the exact optimum of GPyTorch's variational ELBO over full-covariance
    Gaussians, found by :func:`gaussian_vi` (quadrature, L-BFGS) with the SVGP's conditional
    variance, written into the GP's ``CholeskyVariationalDistribution`` (whitened). Returns the
    ``PyroSVGP`` guide and ``info``: :func:`gaussian_vi`'s, ``gpytorch_negative_elbo`` and
    ``gpytorch_max_abs_gradient`` (GPyTorch's own ``VariationalELBO``, times N, and its gradient
    in the variational parameters there: it vanishes when GPyTorch's model is the one solved),
    ``mc_negative_elbo`` (Pyro's Monte-Carlo Trace_ELBO on the ``PyroSVGP`` pair) and the
    entropy of q(v)."""
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
    info["entropy"] = gaussian_entropy(_svgp_moments(model.guide)[1])
    return model.guide, info


def _svgp_moments(guide) -> tuple[torch.Tensor, torch.Tensor]:
    source = guide if isinstance(guide, FrozenPosterior) else guide.strategy.model
    q = inducing_distribution(source)
    return q.mean.clone(), q.covariance_matrix.clone()


def _svgp_optimum(model: SVGPClassifier, x, y, loc, cov):
    loc, cov = model.unwhitened(loc, cov)
    loc, cov, _ = gaussian_vi(model, x, y, loc, torch.linalg.cholesky(cov))
    return model.whitened(loc, cov)


@dataclass(frozen=True)
class ModelVariant:
    """One way of writing the moons model. ``build(data)`` returns the Pyro model
    ``model(x, y=None)`` (its data plate at dim −1) that training and unlearning use;
    ``fit(model, x, y)`` returns q(u|D) as a trained Gaussian guide (a PyroModule) and a dict
    describing the fit; ``optimum(model, x, y, loc, cov)``, if given, the exact Gaussian-VI
    (loc, cov) of the latent ``site`` on other data, started at (loc, cov) (to measure how
    converged the retrained reference is); ``moments(guide)`` the (loc, cov) of a live or frozen
    guide's q(site); ``predictive(model)``, if given, the Pyro model whose observed site ``"y"``
    (Bernoulli, plate ``"data"``) the metrics and figures read (default: the model itself)."""

    description: str
    build: Callable[[MoonsData], Callable]
    fit: Callable[..., tuple[torch.nn.Module, dict]]
    optimum: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    site: str = "u"
    moments: Callable[..., tuple[torch.Tensor, torch.Tensor]] = read_gaussian
    predictive: Callable[[Callable], Callable] | None = None


def _plain_optimum(model, x, y, loc, cov):
    loc, cov, _ = gaussian_vi(model, x, y, loc, torch.linalg.cholesky(cov))
    return loc, cov


#: The model variants, by the key their rows carry in the ``guide`` column.
MODELS: dict[str, ModelVariant] = {
    "mvn": ModelVariant(
        "the authors' sparse-GP classifier in plain Pyro, full-covariance Gaussian q(u)",
        lambda data: SparseGPClassifier(data.inducing),
        train_full_posterior,
        _plain_optimum,
    ),
    "gpytorch": ModelVariant(
        "the same classifier as a GPyTorch sparse variational GP (whitened, logistic "
        "likelihood, fixed kernel), through PyroSVGP",
        lambda data: SVGPClassifier(data.inducing, SVGP_PREFIX),
        train_svgp_posterior,
        _svgp_optimum,
        site=f"{SVGP_PREFIX}.u",
        moments=_svgp_moments,
        predictive=lambda model: model.predictive,
    ),
}


#: The moons' noise, as :func:`~pyro_unlearn.experiments.datasets.moons` draws them.
MOONS_NOISE = 0.2


def mia_nonmembers(
    data: MoonsData, num: int = 200, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fresh non-members for membership inference: draws of ``make_moons(noise=0.2,
    random_state=seed + 1)`` (the data's own are ``random_state=0``). ``"matched"``: the first
    ``num`` that the scenario's rule for D_e would pick (sorted: x₀ ≥ D_e's smallest x₀;
    partial/large/full: class 1 and that x₀; random: any); ``"population"``: the first ``num``.
    Each is ``(x, y)`` in the data's dtype and device.

    Example::

        >>> data = pu.datasets.moons()
        >>> x, y = mia_nonmembers(data, 50)["matched"]
        >>> x.shape, bool((x[:, 0] >= data.x[data.erased, 0].min()).all())
        (torch.Size([50, 2]), True)
    """
    from sklearn.datasets import make_moons

    x, y = make_moons(40 * num, noise=MOONS_NOISE, random_state=seed + 1)
    x, y = data.x.new_tensor(x), data.y.new_tensor(y)
    cut = data.x[data.erased, 0].min()
    if data.scenario == "sorted":
        keep = x[:, 0] >= cut
    elif data.scenario == "random":
        keep = torch.ones_like(y, dtype=torch.bool)
    elif data.scenario in ("partial", "large", "full"):
        keep = (y == 1) & (x[:, 0] >= cut)
    else:
        raise ValueError(f"no non-member rule for the moons scenario {data.scenario!r}")
    matched = keep.nonzero().squeeze(-1)[:num]
    return {"matched": (x[matched], y[matched]), "population": (x[:num], y[:num])}


def _fixed_gaussian(loc: torch.Tensor, cov: torch.Tensor, site: str = "u") -> Callable:
    """A guide function with q(site) = N(loc, cov) and no parameters."""
    q = dist.MultivariateNormal(loc, covariance_matrix=cov)

    def guide(*args, **kwargs):
        return pyro.sample(site, q)

    return guide


def run(
    models: Sequence[str] = ("mvn",),
    *,
    scenario: str = "sorted",
    data: MoonsData | None = None,
    lambdas: Sequence[float] = LAMBDAS,
    retrain_steps: int = 6000,
    retrain_particles: int = 128,
    retrain_lr: float = 0.05,
    retrain_decay: float = 0.01,
    unlearn_steps: int = 3000,
    num_particles: int = 1000,
    lr: float = 0.05,
    num_eval_samples: int = 4000,
    mia_nonmembers_per_group: int = 200,
    mia_repeats: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    keep_posteriors: bool = False,
) -> dict:
    """The moons reproduction for one erasure ``scenario`` (:func:`.datasets.moons`).

    Returns the shared JSON shape ``{"rows", "retrain_seconds", "settings", ...}``: one row per
    (model variant, method, λ) with the averaged predictive KL to the retrained posterior on D_e
    and D_r (mean and std over points), seconds, steps, ``converged`` and the rKL's last ESS; the
    ``full`` rows (λ = 1) are q(u|D). Also ``"scenario"``, ``"training"`` (the fits, the
    retraining's loss trace as means of blocks of steps, the reference's distance to the exact
    optimum), ``"noise_floor"`` (at ``num_eval_samples``
    u-samples) and ``"noise_floor_100"`` (at the authors' 100), ``"reference_error"`` (the
    predictive KL from the exact D_r optimum to the reference), ``"entropy_reduction"``
    (H[q(u|D_r)] − H[q(u|D)] of the reference and q(u|D)) and ``"entropy_reduction_exact"`` (of
    the two exact optima). Membership inference on D_e (module docstring): every row's ``mia_*``
    and ``mia_population_*`` columns (:meth:`~pyro_unlearn.metrics.MembershipAttack.columns`),
    ``"mia"`` the retrained posterior's, per variant; ``mia_nonmembers_per_group`` fresh points
    per non-member group, ``mia_repeats`` balanced resamples. ``keep_posteriors=True`` adds
    ``"posteriors"`` (per variant: the frozen
    retrained posterior and the sweep's) and ``"model"`` (per variant: the Pyro model whose site
    ``"y"`` is the predictive, for :func:`predictive_surface`); not JSON-serialisable. ``models``
    are keys of :data:`MODELS` (``"mvn"``, the authors' model in plain Pyro; ``"gpytorch"``, the
    GPyTorch SVGP); each variant's rows carry its key in the ``guide`` column.

    Unlearning runs ``unlearn_steps`` steps of ``num_particles`` u-samples, ClippedAdam at ``lr``
    decaying tenfold; the reference ``retrain_steps`` of ``retrain_particles`` at ``retrain_lr``
    decaying by ``retrain_decay`` (far enough to reach q(u|D_r) from q(u|D) even when all of
    class 1 is erased, finely enough to end close to it). The defaults are the tutorial's full
    run (about 8 minutes on 2 CPU cores); :data:`DEMO` runs the same λ grid in about a minute,
    :data:`QUICK` two λ in seconds.
    """
    data = data or moons(scenario, seed=seed, device=device)
    x, y = data.x, data.y
    x_e, y_e = x[data.erased], y[data.erased]
    x_r, y_r = x[data.remaining], y[data.remaining]
    nonmembers = mia_nonmembers(data, mia_nonmembers_per_group, seed)
    results: dict = {
        "rows": [],
        "retrain_seconds": {},
        "scenario": data.scenario,
        "training": {},
        "noise_floor": {},
        "noise_floor_100": {},
        "reference_error": {},
        "entropy_reduction": {},
        "entropy_reduction_exact": {},
        "mia": {},
    }
    posteriors, built, predictives = {}, {}, {}
    for name in models:
        variant = MODELS[name]
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        model = built[name] = variant.build(data)
        predictive = model if variant.predictive is None else variant.predictive(model)
        predictives[name] = predictive
        guide, fit = variant.fit(model, x, y)
        loc, cov = (t.clone() for t in variant.moments(guide))
        entropy = gaussian_entropy(cov)
        posterior = pu.freeze(guide, x_e, y_e)
        reference = pu.retrain(
            model,
            guide,
            x_r,
            y_r,
            init="posterior",
            num_steps=retrain_steps,
            window=max(retrain_steps // 2, 1),
            optim=pyro.optim.ClippedAdam(
                {"lr": retrain_lr, "lrd": retrain_decay ** (1 / max(retrain_steps, 1))}
            ),
            num_particles=retrain_particles,
            progress=progress,
        )
        ref_loc, ref_cov = variant.moments(reference.posterior)  # a frozen posterior's: copies
        block = max(1, math.ceil(len(reference.losses) / 500))  # a trace of ≤ 500 block means
        trace = torch.tensor(reference.losses[: len(reference.losses) // block * block])
        fit |= {
            "retrain_steps": len(reference.losses),
            "retrain_converged": reference.converged,
            "retrain_loss_block": block,
            "retrain_loss_trace": trace.reshape(-1, block).mean(-1).tolist(),
        }
        results["retrain_seconds"][name] = reference.seconds
        results["entropy_reduction"][name] = gaussian_entropy(ref_cov) - entropy

        def evaluate(q, reference=reference.posterior, model=predictive, samples=num_eval_samples):
            kls = {}
            for where, inputs in (("erased", x_e), ("remaining", x_r)):
                kl = predictive_kl(model, reference, q, inputs, site="y", num_samples=samples)
                kls[f"kl_{where}_mean"], kls[f"kl_{where}_std"] = mean_and_std(kl)
            return kls

        def mia(q, model=predictive):
            columns = {}
            for group, outside in nonmembers.items():
                attack = membership_inference(
                    model,
                    {"q": q},
                    (x_e, y_e),
                    outside,
                    num_samples=num_eval_samples,
                    entropy=True,
                    repeats=mia_repeats,
                    seed=seed,
                )["q"]
                columns |= attack.columns("mia" if group == "matched" else "mia_population")
            return columns

        results["mia"][name] = {"retrained": mia(reference.posterior)}
        results["noise_floor"][name] = evaluate(reference.posterior)
        results["noise_floor_100"][name] = evaluate(reference.posterior, samples=100)
        if variant.optimum is not None:
            opt_loc, opt_cov = variant.optimum(model, x_r, y_r, loc, cov)
            fit["retrain_kl_to_optimum"] = float(gaussian_kl(ref_loc, ref_cov, opt_loc, opt_cov))
            results["entropy_reduction_exact"][name] = gaussian_entropy(opt_cov) - entropy
            results["reference_error"][name] = evaluate(
                reference.posterior, reference=_fixed_gaussian(opt_loc, opt_cov, variant.site)
            )
        results["training"][name] = fit
        sweep = pu.lambda_sweep(
            model,
            guide,
            x_e,
            y_e,
            evaluate=lambda q, evaluate=evaluate, mia=mia: evaluate(q) | mia(q),
            lambdas=lambdas,
            posterior=posterior,
            guide_name=name,
            progress=progress,
            num_particles=num_particles,
            lr=lr,
            num_steps=unlearn_steps,
            window=max(unlearn_steps // 2, 1),
            max_plate_nesting=1,
        )
        for row in sweep.table.to_dict("records"):
            results["rows"].append(
                {k: json_safe(v) for k, v in row.items()} | {"scenario": data.scenario}
            )
        posteriors[name] = {"retrained": reference.posterior, **sweep.posteriors}
    results["settings"] = {
        "models": {name: MODELS[name].description for name in models},
        "scenario": data.scenario,
        "lambdas": list(lambdas),
        "num_data": len(y),
        "num_erased": len(data.erased),
        "num_erased_class_1": int(y_e.sum()),
        "jitter": {name: getattr(built[name], "jitter", None) for name in models},
        "retrain_steps": retrain_steps,
        "retrain_particles": retrain_particles,
        "retrain_lr": retrain_lr,
        "retrain_decay": retrain_decay,
        "unlearn_steps": unlearn_steps,
        "num_particles": num_particles,
        "lr": lr,
        "num_eval_samples": num_eval_samples,
        "mia_nonmembers": {k: len(v[1]) for k, v in nonmembers.items()},
        "mia_repeats": mia_repeats,
        "seed": seed,
        "device": str(x.device),
        "dtype": str(x.dtype),
        "machine": machine_info(x.device, x.dtype),
    }
    if keep_posteriors:
        results["posteriors"] = posteriors
        results["model"] = predictives
    return results


def run_scenarios(scenarios: Sequence[str] = MOONS_SCENARIOS, **kwargs) -> dict:
    """:func:`run` for each erasure scenario. Returns ``{"scenarios": {name: run(...)}}`` plus
    ``"rows"`` (every scenario's rows, each with its ``"scenario"``), ``"retrain_seconds"``
    and ``"entropy_reduction"`` (``{scenario: {variant: value}}``) and the first run's
    ``"settings"`` with the list of scenarios."""
    runs = {s: run(scenario=s, **kwargs) for s in scenarios}
    first = next(iter(runs.values()))
    return {
        "rows": [row for r in runs.values() for row in r["rows"]],
        "retrain_seconds": {s: r["retrain_seconds"] for s, r in runs.items()},
        "entropy_reduction": {s: r["entropy_reduction"] for s, r in runs.items()},
        "settings": {**first["settings"], "scenario": list(scenarios)},
        "scenarios": runs,
    }


# -- membership inference, paired and without Monte-Carlo noise ----------------------------------
#: Settings of a short :func:`membership_study` (``--quick``, the tests and the notebook's smoke
#: mode): the same pipeline, far fewer steps.
MIA_STUDY_QUICK = dict(
    seeds=(0, 1),
    retrain_steps=800,
    retrain_particles=64,
    unlearn_steps=200,
    num_particles=128,
    mia_repeats=2,
)


#: The scores :func:`membership_study` compares: the attacks against the matched non-members
#: (``mia_*``) and the loss gap, then the same against the population (``mia_population_*``).
MIA_STUDY_METRICS = (
    *MembershipAttack.column_names("mia"),
    "loss_gap",
    *MembershipAttack.column_names("mia_population"),
    "population_loss_gap",
)

#: The posteriors that are not unlearned ones, in the order of the study's rows.
_REFERENCES = ("full", "retrained", "retrained again", "retrained (exact)")


def _quadrature_log_predictive(
    model: SparseGPClassifier, loc: torch.Tensor, cov: torch.Tensor, x: torch.Tensor, num_nodes
) -> torch.Tensor:
    """log p(y|x), y = 0, 1, for q(u) = N(loc, cov): f(x) = a_x·u ~ N(a_x·loc, a_xᵀ cov a_x)."""
    a = model.projection(x)
    loc, cov = loc.to(a), cov.to(a)
    mean = a @ loc
    sd = ((a @ cov) * a).sum(-1).clamp_min(0).sqrt()
    return logistic_log_predictive(mean, sd, num_nodes)


def quadrature_predictive(
    model: SparseGPClassifier, posterior, x: torch.Tensor, *, num_nodes: int = 64
) -> torch.Tensor:
    r"""log p(y|x) for y = 0, 1 under the posterior predictive of the authors' model
    (:class:`SparseGPClassifier`) with a Gaussian q(u) (an ``AutoMultivariateNormal``, live or
    frozen), by ``num_nodes``-point Gauss–Hermite quadrature instead of Monte Carlo: the logit
    f(x) = a_x·u (a_x the row of K_xu K_uu⁻¹) is N(m, s²) with m = a_x·μ, s² = a_xᵀΣa_x, so

    .. math:: p(y=1|x) = E[σ(f)] ≈ \frac{1}{\sqrt π} \sum_i ω_i\, σ(m + \sqrt2\, s\, t_i)

    evaluated in log space. −log p(y|x) is then a deterministic function of (μ, Σ): every
    posterior's per-example loss without Monte-Carlo noise. Returns a tensor of shape
    ``(len(x), 2)`` in the model's dtype and device.

    Example::

        >>> data = pu.datasets.moons()
        >>> model = SparseGPClassifier(data.inducing)
        >>> guide = AutoMultivariateNormal(model, init_loc_fn=pyro.infer.autoguide.init_to_mean)
        >>> q = pu.freeze(guide, data.x, data.y)  # u ~ N(0, 0.1² I): p(y=1|x) = ½ by symmetry
        >>> quadrature_predictive(model, q, data.x[:2]).exp()
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]], dtype=torch.float64)
    """
    if not isinstance(model, SparseGPClassifier):
        raise TypeError(
            "quadrature_predictive needs the authors' model (SparseGPClassifier), got "
            f"{type(model).__name__}"
        )
    dims = model.inducing.shape[-1]
    if x.dim() != 2 or x.shape[-1] != dims:
        raise ValueError(f"x must be (points, {dims}), got shape {tuple(x.shape)}")
    loc, cov = read_gaussian(posterior)  # TypeError for a guide that is not Gaussian
    return _quadrature_log_predictive(model, loc, cov, x, num_nodes)


def membership_study(
    seeds: Sequence[int] = tuple(range(10)),
    *,
    lambdas: Sequence[float] = (1e-9, 0.0),
    methods: Sequence[str] = ("eubo", "rkl"),
    data: MoonsData | None = None,
    retrain_steps: int = DEMO["retrain_steps"],
    retrain_particles: int = 128,
    retrain_lr: float = 0.05,
    retrain_decay: float = 0.01,
    unlearn_steps: int = DEMO["unlearn_steps"],
    num_particles: int = DEMO["num_particles"],
    lr: float = DEMO["lr"],
    num_nodes: int = 64,
    mia_nonmembers_per_group: int = 200,
    mia_repeats: int = 10,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    keep_posteriors: bool = False,
) -> dict:
    """Membership inference on D_e for the authors' model, paired and over several draws of
    non-members.

    D_e is fixed by the erasure (the sorted one by default, ``data``), so the posteriors are
    fitted once, with ``seed`` and :func:`run`'s protocol at the demo's settings (:data:`DEMO`):
    q(u|D) the exact Gaussian-VI optimum ("full"), retrained on D_r from it twice from two
    random streams ("retrained", the reference, and "retrained again": the optimiser's noise
    floor), the exact Gaussian-VI optimum on D_r ("retrained (exact)"), and D_e unlearned with
    every method at every λ (:func:`~pyro_unlearn.lambda_sweep`). Every posterior's per-example
    loss −log p(y|x) and predictive entropy come from :func:`quadrature_predictive`: the scores
    are deterministic given the posterior. Then, per seed s, fresh non-members
    (:func:`mia_nonmembers` with seed s, ``mia_nonmembers_per_group`` per group: matched to D_e's
    selection rule, and the unfiltered population) are attacked with
    :func:`~pyro_unlearn.metrics.membership_attack` on the same members, non-members and folds
    (seeded by s) for every posterior: paired. The seeds' spread is the non-members' draw only.

    Returns ``{"rows", "summary", "comparisons", "per_example", "settings"}``, laid out as
    :func:`pyro_unlearn.experiments.banknote.membership_study`'s: ``rows`` one per (seed,
    posterior) with the ``mia_*`` (matched) and ``mia_population_*`` columns, ``loss_gap`` and
    ``population_loss_gap`` (mean loss of the non-members − that of the members; > 0: members
    fit better), ``loss_to_retrained`` and ``loss_to_full`` (mean |ℓ − ℓ_retrained| and
    |ℓ − ℓ_full| over D_e, paired per example; the same for every seed) and the fit's
    ``seconds``, ``steps``, ``converged``; ``summary`` their mean and sd over seeds per
    posterior; ``comparisons`` per unlearned posterior and metric of :data:`MIA_STUDY_METRICS`:
    on how many seeds |u − r| < |u − f|, whether it holds for the seed means, the mean absolute
    differences, ``gap_over_noise`` = |f − r| / |r' − r| (r' "retrained again"; None where
    r' = r on every seed) and the signed paired f − r and u − r (mean, sd); ``per_example`` per
    posterior, on D_e: ``loss_to_retrained``, ``loss_to_full``, ``kl_from_retrained`` and
    ``kl_from_full`` (the paper's averaged predictive KL[p_ref(y|x) ‖ p(y|x)], exact) and on
    how many examples |ℓ_u − ℓ_r| < |ℓ_u − ℓ_f| (``closer_examples``). The full fit's
    ``steps`` are L-BFGS iterations; the exact D_r optimum has none. ``keep_posteriors=True``
    adds ``"posteriors"`` (the frozen ones; not JSON-serialisable) and ``"model"``.

    Example (``tests/experiments/test_moons.py`` runs a tiny one)::

        study = membership_study(**MIA_STUDY_QUICK)
        pd.DataFrame(study["comparisons"])
    """
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if min(seeds) < 0:  # mia_nonmembers draws random_state = s + 1; the data's is 0
        raise ValueError(f"seeds must be non-negative (seed −1 would redraw the data), got {seeds}")
    start = time.perf_counter()
    data = data or moons("sorted", device=device)
    x, y = data.x, data.y
    x_e, y_e = x[data.erased], y[data.erased]
    x_r, y_r = x[data.remaining], y[data.remaining]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = SparseGPClassifier(data.inducing)
    guide, fit = train_full_posterior(model, x, y)
    posterior = pu.freeze(guide, x_e, y_e)
    references = [
        pu.retrain(
            model,
            guide,
            x_r,
            y_r,
            init="posterior",
            num_steps=retrain_steps,
            window=max(retrain_steps // 2, 1),
            optim=pyro.optim.ClippedAdam(
                {"lr": retrain_lr, "lrd": retrain_decay ** (1 / max(retrain_steps, 1))}
            ),
            num_particles=retrain_particles,
            progress=progress,
        )
        for _ in range(2)  # the second continues the random stream: the optimiser's noise
    ]
    loc, cov = read_gaussian(guide)
    exact_loc, exact_cov = _plain_optimum(model, x_r, y_r, loc, cov)
    sweep = pu.lambda_sweep(
        model,
        guide,
        x_e,
        y_e,
        evaluate=lambda q: {},
        lambdas=lambdas,
        methods=methods,
        posterior=posterior,
        guide_name="mvn",
        progress=progress,
        num_particles=num_particles,
        lr=lr,
        num_steps=unlearn_steps,
        window=max(unlearn_steps // 2, 1),
        max_plate_nesting=1,
    )
    full_fit = (fit["seconds"], fit["iterations"], fit["converged"])
    chosen, fits = compared_posteriors(posterior, full_fit, references, sweep)
    fits["retrained (exact)"] = (None, None, None)
    moments = {name: read_gaussian(q) for name, q in chosen.items()}
    moments["retrained (exact)"] = (exact_loc, exact_cov)
    names = [*_REFERENCES, *(n for n in chosen if n not in _REFERENCES)]
    groups = {s: mia_nonmembers(data, mia_nonmembers_per_group, s) for s in seeds}

    def log_predictive(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        # float64: in float32, rounding (~3e-6) would be the largest error left in the losses
        return {
            n: _quadrature_log_predictive(model, *moments[n], inputs.double(), num_nodes)
            for n in names
        }

    def scores(inputs: torch.Tensor, labels: torch.Tensor) -> dict:
        return {n: loss_and_entropy(log_p, labels) for n, log_p in log_predictive(inputs).items()}

    log_p_e = log_predictive(x_e)
    members = {n: loss_and_entropy(log_p, y_e) for n, log_p in log_p_e.items()}
    loss_r, loss_f = members["retrained"][0], members["full"][0]
    rows = []
    for s in tqdm(seeds, desc="membership study (non-member draws)", disable=not progress):
        outside = {group: scores(*xy) for group, xy in groups[s].items()}
        for name in names:
            loss_m, h_m = members[name]
            columns = {}
            for group, prefix, gap in (
                ("matched", "mia", "loss_gap"),
                ("population", "mia_population", "population_loss_gap"),
            ):
                loss_n, h_n = outside[group][name]
                attack = membership_attack(
                    loss_m, loss_n, features=(h_m, h_n), repeats=mia_repeats, seed=s
                )
                columns |= attack.columns(prefix)
                columns[gap] = float(loss_n.mean() - loss_m.mean())
            seconds, steps, converged = fits[name]
            rows.append(
                {
                    "seed": s,
                    "posterior": name,
                    **columns,
                    "loss_to_retrained": float((loss_m - loss_r).abs().mean()),
                    "loss_to_full": float((loss_m - loss_f).abs().mean()),
                    "seconds": seconds,
                    "steps": steps,
                    "converged": None if converged is None else bool(converged),
                }
            )
    per_example = []
    for name in names:
        loss = members[name][0]
        to_r, to_f = (loss - loss_r).abs(), (loss - loss_f).abs()
        kl = {  # the paper's metric on D_e, exact: KL[p_ref(y|x) ‖ p(y|x)] averaged over D_e
            ref: float((log_p_e[ref].exp() * (log_p_e[ref] - log_p_e[name])).sum(-1).mean())
            for ref in ("retrained", "full")
        }
        per_example.append(
            {
                "posterior": name,
                "loss_to_retrained": float(to_r.mean()),
                "loss_to_full": float(to_f.mean()),
                "kl_from_retrained": kl["retrained"],
                "kl_from_full": kl["full"],
                "closer_examples": int((to_r < to_f).sum()),
                "num_examples": len(loss),
            }
        )
    columns = [*MIA_STUDY_METRICS, "loss_to_retrained", "loss_to_full"]
    unlearned = [n for n in names if n not in _REFERENCES]
    results = {
        "rows": rows,
        "summary": summarise(rows, names, columns),
        "comparisons": [compare(rows, n, m) for n in unlearned for m in MIA_STUDY_METRICS],
        "per_example": per_example,
        "settings": {
            "seeds": list(seeds),
            "scenario": data.scenario,
            "model": "mvn",
            "num_members": len(y_e),
            "num_nonmembers": {g: len(v[1]) for g, v in groups[seeds[0]].items()},
            "lambdas": list(lambdas),
            "methods": list(methods),
            "retrain_steps": retrain_steps,
            "retrain_particles": retrain_particles,
            "retrain_lr": retrain_lr,
            "retrain_decay": retrain_decay,
            "unlearn_steps": unlearn_steps,
            "num_particles": num_particles,
            "lr": lr,
            "num_nodes": num_nodes,
            "mia_repeats": mia_repeats,
            "seed": seed,
            "retrain_kl_to_exact": {
                name: float(gaussian_kl(*moments[name], exact_loc, exact_cov))
                for name in ("retrained", "retrained again")
            },
            "device": str(x.device),
            "dtype": str(x.dtype),
            "machine": machine_info(x.device, x.dtype),
            "seconds": time.perf_counter() - start,
        },
    }
    if keep_posteriors:
        results["posteriors"] = chosen
        results["model"] = model
    return results


#: The scores :func:`plot_membership_study` draws by default.
_PLOTTED = (
    "mia_accuracy",
    "mia_auc",
    "mia_logistic_auc",
    "loss_gap",
    "mia_population_auc",
    "population_loss_gap",
)


def plot_membership_study(study: dict, metrics: Sequence[str] | None = None, columns: int = 3):
    """Each posterior's score minus the retrained posterior's, per non-member draw (dots; the
    same draw for every posterior) and their mean (bars), one panel per metric (default: the
    matched attacks' accuracy and AUC, the logistic attack's AUC and the loss gap, then the
    population's AUC and loss gap). Returns the figure."""
    metrics = list(metrics or _PLOTTED)
    names = [s["posterior"] for s in study["summary"]]
    by = {(r["seed"], r["posterior"]): r for r in study["rows"]}
    seeds = study["settings"]["seeds"]
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for i, name in enumerate(names):
            paired = np.array([by[s, name][metric] - by[s, "retrained"][metric] for s in seeds])
            color = "C3" if name == "full" else "C2" if name.startswith("retrained") else "C0"
            ax.plot([i] * len(paired), paired, "o", color=color, alpha=0.4, ms=4)
            ax.plot(i, paired.mean(), "_", color="k", ms=14, mew=2)
        ax.axhline(0, color="C2", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{metric} − retrained", fontsize=9)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(
        f"moons, {study['settings']['scenario']} erasure: each posterior minus the retrained one, "
        f"per non-member draw (dots) and mean (bars), {len(seeds)} draws",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# -- figures ------------------------------------------------------------------------------------
def _scatter(ax, data: MoonsData, inducing: bool = False) -> None:
    x, y, erased = data.x.cpu(), data.y.cpu(), data.mask.cpu()
    for label, color in ((0, "tab:blue"), (1, "tab:red")):
        keep = (y == label) & ~erased
        ax.scatter(
            *x[keep].T, s=14, c=color, edgecolors="k", linewidths=0.4, label=f"class {label}"
        )
        gone = (y == label) & erased
        ax.scatter(*x[gone].T, s=40, c=color, marker="X", edgecolors="k", linewidths=0.6)
    ax.scatter([], [], s=40, c="w", marker="X", edgecolors="k", label="erased ($D_e$)")
    if inducing:
        ax.scatter(
            *data.inducing.cpu().T,
            s=36,
            marker="^",
            c="gold",
            edgecolors="k",
            label="inducing inputs",
        )


def plot_data(data: MoonsData, ax=None):
    """The moons with D_e marked (crosses) and the inducing inputs (triangles). Returns the
    figure."""
    fig, ax = plt.subplots(figsize=(5, 3.6)) if ax is None else (ax.figure, ax)
    _scatter(ax, data, inducing=True)
    ax.set(
        xlabel="$x_0$",
        ylabel="$x_1$",
        title=f"moons, {data.scenario} erasure: {len(data.erased)} of {len(data.y)} erased",
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def predictive_surface(
    model: Callable,
    posterior: Callable,
    grid: torch.Tensor,
    num_samples: int = 500,
    chunk: int = 500,
) -> torch.Tensor:
    """p(y = 1 | x) at every row of ``grid``, the Monte-Carlo mean over ``num_samples``
    u-samples (fresh ones for each ``chunk`` of rows, bounding the memory)."""
    return torch.cat(
        [
            predictive_distribution(model, posterior, part, site="y", num_samples=num_samples).probs
            for part in grid.split(chunk)
        ]
    )


def plot_surfaces(
    model: Callable,
    posteriors: dict[str, Callable],
    data: MoonsData,
    *,
    resolution: int = 60,
    num_samples: int = 500,
    columns: int = 3,
    title: str = "",
):
    """The predictive probability p(y = 1 | x) of each posterior ``{title: posterior}`` on a
    grid, as filled contours (the 0.5 line drawn), with the data and D_e marked. Returns the
    figure."""
    x = data.x
    lo, hi = x.min(0).values - 0.5, x.max(0).values + 0.5
    g0 = torch.linspace(float(lo[0]), float(hi[0]), resolution, dtype=x.dtype, device=x.device)
    g1 = torch.linspace(float(lo[1]), float(hi[1]), resolution, dtype=x.dtype, device=x.device)
    mesh = torch.stack(torch.meshgrid(g0, g1, indexing="xy"), -1)
    rows = math.ceil(len(posteriors) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.6 * columns + 1, 3 * rows),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    levels = np.linspace(0, 1, 11)
    for ax, (name, posterior) in zip(axes.flat, posteriors.items(), strict=False):
        probs = predictive_surface(model, posterior, mesh.reshape(-1, 2), num_samples)
        probs = probs.reshape(resolution, resolution).cpu()
        filled = ax.contourf(g0.cpu(), g1.cpu(), probs, levels=levels, cmap="RdBu_r", alpha=0.8)
        ax.contour(g0.cpu(), g1.cpu(), probs, levels=[0.5], colors="k", linewidths=1)
        _scatter(ax, data)
        ax.set_title(name, fontsize=10)
    for ax in axes.flat[len(posteriors) :]:
        ax.axis("off")
    fig.colorbar(filled, ax=axes, shrink=0.8, label="$p(y=1|x)$")
    if title:
        fig.suptitle(title)
    return fig


def plot_kl(rows: Sequence[dict], title: str = "", authors: bool = True):
    """The paper's Fig. 2 panels (:func:`~pyro_unlearn.sweep.plot_kl_against_lambda`: averaged
    KL on D_e and on D_r against λ), with the authors' numbers (:data:`AUTHORS`, sorted erasure)
    overlaid as dotted lines of the same colours when ``authors``. Returns the figure."""
    from ..sweep import PAPER_PANELS, plot_kl_against_lambda

    fig = plot_kl_against_lambda(rows, PAPER_PANELS, title=title)
    if not authors:
        return fig
    methods = sorted({r["method"] for r in rows} - {"full"})
    for i, ax in enumerate(fig.axes[: len(PAPER_PANELS)]):
        for color, method in enumerate(methods):
            lams = sorted(AUTHORS.get(method, {}))
            ax.plot(
                [lam or 1e-12 for lam in lams],
                [AUTHORS[method][lam][i] for lam in lams],
                ":x",
                color=f"C{color}",
                label=f"{method} (authors)",
            )
        ax.axhline(AUTHORS["full"][1.0][i], color="gray", ls=":", label="full (authors)")
    fig.axes[0].legend(fontsize=7)
    return fig
