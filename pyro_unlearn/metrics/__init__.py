"""Comparing posteriors: over θ, over predictions, in ArviZ, and by membership inference.

- :mod:`~pyro_unlearn.metrics.parameters`: :func:`param_kl` (closed form :func:`gaussian_kl`
  for Gaussian guides, Monte Carlo otherwise), in the guides' unconstrained space;
- :mod:`~pyro_unlearn.metrics.predictive`: the Monte-Carlo posterior predictive
  :func:`predictive_distribution` p(y|x) = (1/S) Σ_s p(y|x, θ_s), θ_s ~ q(θ), and
  :func:`predictive_kl`, the unlearning papers' metric KL[q_retrained(y|x) ‖ q_unlearned(y|x)]
  per data point; :func:`accuracy`, :func:`log_predictive_density`, :func:`mean_and_std`, and
  :func:`logistic_log_predictive` for a Gaussian logit;
- :mod:`~pyro_unlearn.metrics.inference_data`: :func:`to_inference_data`, ArviZ
  ``InferenceData`` of several posteriors;
- :mod:`~pyro_unlearn.metrics.membership`: membership inference, :func:`per_example_loss`
  (−log of each example's Monte-Carlo predictive), :func:`membership_attack` (loss-threshold
  and logistic-regression attackers, cross-validated, on any network's losses) and
  :func:`membership_inference` (both, for several posteriors of one model).

A posterior is anything usable as a Pyro guide: a live AutoGuide, a guide function or a
:class:`~pyro_unlearn.posterior.FrozenPosterior`. Two *live* AutoGuides of the same class share
their parameters' names in the param store (they are the same distribution): compare different
posteriors as frozen ones (:func:`pyro_unlearn.freeze`). Every metric runs without gradients,
with θ-samples vectorised by a plate outside the model's plates, on the tensors' device.
"""

from .inference_data import to_inference_data
from .membership import (
    MembershipAttack,
    loss_and_entropy,
    membership_attack,
    membership_inference,
    per_example_loss,
)
from .parameters import gaussian_kl, param_kl
from .predictive import (
    accuracy,
    log_predictive_density,
    logistic_log_predictive,
    mean_and_std,
    predictive_distribution,
    predictive_kl,
)

__all__ = [
    "MembershipAttack",
    "accuracy",
    "gaussian_kl",
    "log_predictive_density",
    "logistic_log_predictive",
    "loss_and_entropy",
    "mean_and_std",
    "membership_attack",
    "membership_inference",
    "param_kl",
    "per_example_loss",
    "predictive_distribution",
    "predictive_kl",
    "to_inference_data",
]
