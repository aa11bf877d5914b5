r"""Unlearning GPyTorch sparse variational GPs: from q(u|D) to q(u|D_r), through Pyro or in
GPyTorch's own idiom.

Given the inducing values u, a sparse variational GP's likelihood is, per point, the one its
evidence lower bound uses (GPyTorch's :class:`~gpytorch.mlls.VariationalELBO`, Hensman et al.,
2015):

.. math:: \log \tilde p(y_i|u) = \mathbb{E}_{p(f_i|u)}[\log p(y_i|f_i)], \qquad
          p(f_i|u) = N\big(m(x_i) + a_i^\top v,\; k(x_i, x_i) - \|a_i\|^2\big)

with :math:`a_i = L^{-1} K_{Z x_i}`, :math:`L L^\top = K_{ZZ}` and :math:`v = u` for the whitened
:class:`~gpytorch.variational.VariationalStrategy` or :math:`v = L^{-1}(u - m(Z))` for the
:class:`~gpytorch.variational.UnwhitenedVariationalStrategy`. Since
:math:`\mathbb{E}_{q(u)}[\sum_i \log \tilde p(y_i|u)] - \mathrm{KL}(q(u)\|p(u))` *is* GPyTorch's
ELBO, q(u|D)/p̃(D_e|u) is the target of unlearning (Nguyen et al., 2020); with a Gaussian
likelihood and the optimal Gaussian q(u|D) it is exactly the optimal q(u|D_r).

Kernel, mean, likelihood hyperparameters and inducing inputs are held fixed: only q(u) moves (they
would otherwise move to make D_e unlikely). q(u) may be a Cholesky, mean-field or (GPyTorch
objectives with :class:`gpytorch.optim.NGD` only) natural-parameter Gaussian. Two ways in:

* **Pyro:** :class:`PyroSVGP` gives a ``model``/``guide`` pair in which y depends on the sampled
  u. Use it with :class:`~pyro_unlearn.Trace_EUBO`, :class:`~pyro_unlearn.ReverseKL`,
  :func:`~pyro_unlearn.unlearn` and :func:`~pyro_unlearn.forget`.
* **GPyTorch:** :class:`VariationalEUBO` and :class:`VariationalReverseKL` are shaped like
  :mod:`gpytorch.mlls`: ``loss = -objective(model(x_e), y_e, inputs=x_e)`` in the usual loop,
  from q(u|D) frozen by :func:`freeze_inducing`.

The objectives guard what GPyTorch's training loops leave behind: they run in ``train()`` mode
and give the GP its mode back, refuse (and put back) hyperparameters an optimiser over
``model.parameters()`` moved, and the λ = 0 EUBO refuses a q(u|D) the erased data cannot be
divided out of (:func:`erased_precision_share` ≥ 1, typical of a q(u|D) short of its optimum).
Put q(u|D) at the ELBO's optimum for the final hyperparameters before freezing it
(:func:`converge_inducing`; :func:`inducing_gap`, or ``freeze_inducing(gp, likelihood=...,
data=(x, y))``, measures how far it is). How far to trust the answer, without D_r:
:func:`diagnose_inducing` (``objective.diagnose``) and :func:`pyro_unlearn.trust.verdict`;
:func:`restore_inducing` serves the next request from q(u|D).

References:
    - Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.
    - J. Hensman, A. Matthews, Z. Ghahramani. Scalable Variational Gaussian Process
      Classification. AISTATS 2015.
"""

from __future__ import annotations

import warnings
from typing import Any

from .conditional import inducing_log_likelihood
from .inducing import (
    InducingGuide,
    freeze_inducing,
    inducing_distribution,
    inducing_kl,
    restore_inducing,
    set_inducing_distribution,
)
from .moments import ErasedInducingLikelihood, inducing_reverse_kl
from .objectives import VariationalEUBO, VariationalReverseKL
from .objectives.guards import check_ngd
from .optimum import (
    InducingGapWarning,
    PrecisionWarning,
    check_precision,
    converge_inducing,
    inducing_gap,
    natural_step,
)
from .strategy import clone
from .svgp import PyroSVGP, check_not_pyro_gp
from .trust import diagnose_inducing, erased_precision_share

__all__ = [
    "ErasedInducingLikelihood",
    "InducingGapWarning",
    "InducingGuide",
    "PrecisionWarning",
    "PyroSVGP",
    "VariationalEUBO",
    "VariationalReverseKL",
    "check_ngd",
    "check_precision",
    "check_not_pyro_gp",
    "clone",
    "converge_inducing",
    "diagnose_inducing",
    "erased_precision_share",
    "freeze_inducing",
    "inducing_distribution",
    "inducing_gap",
    "inducing_kl",
    "inducing_log_likelihood",
    "inducing_reverse_kl",
    "natural_step",
    "restore_inducing",
    "set_inducing_distribution",
]

# Names of 0.1.0 that shadowed top-level names with other signatures (pu.freeze, pu.erased_log_
# likelihood): they still work, with a FutureWarning, and are no longer part of the public face.
_RENAMED = {"freeze": "freeze_inducing", "erased_log_likelihood": "inducing_log_likelihood"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(
            f"pyro_unlearn.contrib.gpytorch.{name} is renamed {new} (it shadowed "
            f"pyro_unlearn.{name}, which takes other arguments); the old name will be removed",
            FutureWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
