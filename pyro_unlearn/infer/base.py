"""What the unlearning losses share: λ, the frozen posterior, particles, and the loss contract."""

from __future__ import annotations

import math
from abc import abstractmethod

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.util import torch_item

from ..posterior import FrozenPosterior
from ..traces import particle_dim_of
from .adjusted_likelihood import adjusted_log_likelihood, check_lam, log_threshold

__all__ = ["UnlearningLoss"]


class UnlearningLoss(ELBO):
    """Base of :class:`~pyro_unlearn.Trace_EUBO` and :class:`~pyro_unlearn.ReverseKL`.

    A drop-in loss for :class:`pyro.infer.SVI`: ``loss``, ``loss_and_grads`` and
    ``differentiable_loss`` behave as Pyro's, with ``num_particles``, ``vectorize_particles``,
    ``max_plate_nesting`` and ``retain_graph`` as in :class:`pyro.infer.Trace_ELBO`. The model's
    own parameters are hidden from the optimiser; only the guide's are trained. Subclasses
    compute per-particle terms (:meth:`_particles`) and combine them (:meth:`_objective`).
    """

    def __init__(
        self,
        posterior: FrozenPosterior,
        lam: float = 0.0,
        *,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        max_plate_nesting: float = float("inf"),
        retain_graph: bool | None = None,
    ) -> None:
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(
                f"posterior must be a FrozenPosterior from pyro_unlearn.freeze(guide), got "
                f"{type(posterior).__name__}; a live guide would move with the optimiser"
            )
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles}")
        self.posterior = posterior
        self.lam = check_lam(lam)
        super().__init__(
            num_particles=int(num_particles),
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )

    @property
    def log_threshold(self) -> torch.Tensor:
        """log λ + log q*, the adjusted likelihood's threshold on log q(θ|D)."""
        return log_threshold(self.lam, self.posterior.log_q_max)

    def _adjusted(self, log_lik: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """log p_adj(D_e|θ; λ) per particle. λ = 0 is the plain likelihood: no threshold, so
        log q* is never needed (a flow posterior's numeric mode search is skipped)."""
        if self.lam == 0.0:
            return log_lik
        return adjusted_log_likelihood(log_lik, log_q, self.log_threshold)

    # ELBO dispatches particles (loop or vectorised plate) through these two.
    def _get_trace(self, model, guide, args, kwargs):
        return self._particles(model, guide, self.posterior, args, kwargs, None, 1)

    def _get_vectorized_trace(self, model, guide, args, kwargs):
        wrap = self._vectorized_num_particles
        dim = particle_dim_of(self.num_particles, True, self.max_plate_nesting)
        return self._particles(
            wrap(model), wrap(guide), wrap(self.posterior), args, kwargs, dim, self.num_particles
        )

    @abstractmethod
    def _particles(self, model, guide, posterior, args, kwargs, particle_dim, num_particles):
        """Return a dict of per-particle tensors of shape ``(num_particles,)``."""

    @abstractmethod
    def _objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Combine the per-particle terms of all particles into the differentiable loss."""

    def _terms(self, model, guide, args, kwargs) -> dict[str, torch.Tensor]:
        model = poutine.block(model, hide_types=["param"])  # never train the model's params
        particles = list(self._get_traces(model, guide, args, kwargs))
        return {k: torch.cat([p[k] for p in particles]) for k in particles[0]}

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = self._objective(self._terms(model, guide, args, kwargs))
        _check_finite(torch_item(loss))
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return _check_finite(
                torch_item(self._objective(self._terms(model, guide, args, kwargs)))
            )

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self._objective(self._terms(model, guide, args, kwargs))
        value = _check_finite(torch_item(loss))
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return value


def _check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(
            f"the unlearning loss is {value}: the target q(θ|D)/p_adj(D_e|θ) may not be "
            "normalisable here (erased data too informative for q(θ|D)); try a larger lam, "
            "ReverseKL, or more particles"
        )
    return value
