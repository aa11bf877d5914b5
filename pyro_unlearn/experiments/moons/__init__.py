"""Sparse-GP classification on the two moons: the paper's Sec. 4.1, Fig. 2 and Appendix E–F.

The authors' model, in plain Pyro (:mod:`.model`): 20 fixed inducing inputs X_u, a fixed
squared-exponential kernel k(x, x') = 4.7432 · exp(−½ Σ_d ℓ_d (x_d − x'_d)²) with
ℓ = (2.4232, 1.8230) (ℓ multiplies the squared distance), the inducing values u ~ N(0, K_uu) as
the only latent, the logit f(x) = k(x, X_u) K_uu⁻¹ u (the conditional mean only) and
y ~ Bernoulli(sigmoid f(x)); a full-covariance Gaussian q(u). No jitter: K_uu's smallest
eigenvalue is 3·10⁻³ and its Cholesky succeeds in float32 and float64.

Choices (the authors' protocol otherwise):

* q(u|D) is the **exact optimum of the ELBO over full-covariance Gaussians** (:mod:`.fit`):
  f(x_n) is linear in u, so each expected log-likelihood E_q[log σ(±f(x_n))] is a 1-D Gaussian
  integral, computed by Gauss–Hermite quadrature (as GPflow's SVGP does), and the ELBO is
  maximised by L-BFGS to a vanishing gradient in about a second. The authors ran Adam for
  30 000 Monte-Carlo steps; the objective is the same. The result records the Monte-Carlo ELBO
  at the optimum as a check.
* The reference q(u|D_r) is ``pu.retrain`` (Monte-Carlo ELBO, ClippedAdam, the learning rate
  decaying a hundredfold) warm-started from q(u|D), the authors' choice; how far it ended from
  the exact optimum on D_r (the same quadrature) is recorded, as a parameter KL and as the
  predictive KL it adds to every number.
* Unlearning (``pu.lambda_sweep`` → ``pu.forget``) runs from q(u|D) for a fixed number of
  steps, as the authors did, with ClippedAdam, the learning rate decaying tenfold over the run.
  The rKL's loss is a self-normalised importance-sampling estimate whose noise hides its slow
  progress from a flatness test, so the library's rule only reports, in ``converged``, whether
  the second half of the run's loss trace was flat against the first. With ``solver="natural"``
  (``pyro-unlearn demo`` and ``--quick``: :data:`DEMO`, :data:`QUICK`) the Gaussian q(u) is
  unlearned in its own geometry instead (:mod:`.solvers`): the reverse KL by moment matching
  (:func:`~pyro_unlearn.infer.gaussian_reverse_kl`, the SGD reverse KL's fixed point with as
  many particles, stopping by its own Monte-Carlo error) and the EUBO by natural-gradient steps
  (:func:`~pyro_unlearn.infer.gaussian_eubo`); each row's ``solver`` says which ran.
* Metric (:mod:`.reproduction`): the averaged predictive KL[q_retrained(y|x) ‖ q_unlearned(y|x)]
  over D_e and D_r, each predictive the Monte-Carlo mean over ``num_eval_samples`` u-samples
  (authors: 100); its noise floor at our sample count and at the authors' 100; the entropy
  reduction H[q(u|D_r)] − H[q(u|D)] (closed-form Gaussian entropies).
* Membership inference (not in the paper; :func:`~pyro_unlearn.metrics.membership_inference`):
  members are D_e, non-members fresh points of the same generator (``make_moons(noise=0.2)``,
  ``random_state = seed + 1``; the data's is 0), never trained on. The ``mia_*`` columns take
  the non-members **matched** to D_e by the scenario's selection rule, so that a posterior that
  never saw D_e scores 0.5 up to noise: they measure membership. The ``mia_population_*``
  columns take unfiltered draws: for the structured erasures they also measure how well the
  posterior fits D_e's region. Loss-threshold and logistic attacks (features: per-point loss and
  predictive entropy), balanced, 5-fold, ``mia_repeats`` resamples; with |D_e| = 20 their noise
  is large (an AUC's sd is about 0.07). :func:`membership_study` (:mod:`.mia_study`) pairs them
  over non-member draws, with exact (quadrature) losses.

The model variants are the entries of :data:`MODELS`; ``run(models=(...))`` reports each under
its key in the rows' ``guide`` column: ``"mvn"``, the authors' model above
(:class:`SparseGPClassifier`, an ``AutoMultivariateNormal`` q(u)); ``"gpytorch"``, the same
classifier as a GPyTorch sparse variational GP (:class:`SVGPClassifier`, :mod:`.svgp`): the same
fixed kernel, zero mean and inducing inputs, a whitened ``VariationalStrategy``
(``jitter_val=0``) with a ``CholeskyVariationalDistribution`` over v = L⁻¹ u, and a logistic
Bernoulli likelihood (GPyTorch's own is probit), unlearned through
:class:`~pyro_unlearn.contrib.gpytorch.PyroSVGP`. The one modelling difference: the SVGP keeps
Var[f(x)|u] (median 0.017, at most 1.2 at the data), which the authors' logit drops; the two
q(u|D) are 0.003 nats apart. Its ``entropy`` (of q(v)) differs from the plain q(u)'s by
log det L; entropy reductions and KLs do not.

References:
    - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
    - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
      Classification. AISTATS 2015.

Example::

    from pyro_unlearn.experiments import moons as experiment

    results = experiment.run(**experiment.QUICK)
    experiment.plot_kl(results["rows"])
"""

from __future__ import annotations

from .fit import (
    MODELS,
    ModelVariant,
    exact_optimum,
    gaussian_entropy,
    gaussian_vi,
    retrain_reference,
    svgp_exact_optimum,
    svgp_moments,
    train_full_posterior,
    train_svgp_posterior,
)
from .mia_study import MIA_STUDY_METRICS, MIA_STUDY_QUICK, membership_study, quadrature_predictive
from .model import INVERSE_SQUARED_LENGTHSCALES, VARIANCE, SparseGPClassifier, kernel
from .plots import plot_data, plot_kl, plot_membership_study, plot_surfaces, predictive_surface
from .reproduction import AUTHORS, DEMO, MOONS_NOISE, QUICK, mia_nonmembers, run, run_scenarios
from .svgp import SVGP_PREFIX, LogisticBernoulliLikelihood, MoonsSVGP, SVGPClassifier

__all__ = [
    "AUTHORS",
    "DEMO",
    "INVERSE_SQUARED_LENGTHSCALES",
    "MIA_STUDY_METRICS",
    "MIA_STUDY_QUICK",
    "MODELS",
    "MOONS_NOISE",
    "QUICK",
    "SVGP_PREFIX",
    "VARIANCE",
    "LogisticBernoulliLikelihood",
    "ModelVariant",
    "MoonsSVGP",
    "SVGPClassifier",
    "SparseGPClassifier",
    "exact_optimum",
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
    "retrain_reference",
    "run",
    "run_scenarios",
    "svgp_exact_optimum",
    "svgp_moments",
    "train_full_posterior",
    "train_svgp_posterior",
]
