"""Reverse KL unlearning: self-normalised importance sampling from the frozen q(θ|D)."""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from ..handlers import ERASED, erased_log_likelihood
from ..traces import latent_sites, sum_sites_per_particle
from .base import UnlearningLoss
from .eubo import check_sites_match

__all__ = ["ReverseKL", "effective_sample_size"]


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """ESS = (Σw)² / Σw², between 1 (one particle carries all weight) and the particle count."""
    return weights.sum() ** 2 / (weights**2).sum()


class ReverseKL(UnlearningLoss):
    r"""Unlearning by minimising KL(p̃_adj ‖ q_v) over q_v, started at q(θ|D), where
    p̃_adj(θ) ∝ q(θ|D) / p_adj(D_e|θ; λ).

    θ_s ~ q(θ|D) is drawn from the *frozen* posterior (no gradient), ℓ_s = log p_adj(D_e|θ_s),
    and the self-normalised weights w_s = S·softmax_s(−ℓ_s) (mean 1) give the loss
    −mean_s[w_s · log q_v(θ_s)] (the cross-entropy; no entropy term). Samples never come from
    where q(θ|D) is small, which curbs unlearning there even at λ = 0. The estimator is biased by
    O(1/num_particles); watch :attr:`ess` (the effective sample size of the last step): a
    collapsing ESS means D_e is too informative to importance-sample from q(θ|D).

    The guide need not be reparameterised. Arguments and usage are those of
    :class:`~pyro_unlearn.Trace_EUBO`.

    Attributes:
        ess: effective sample size (a 0-dim tensor) of the last evaluated step.
    """

    ess: torch.Tensor | None = None

    def _particles(self, model, guide, posterior, args, kwargs, particle_dim, num_particles):
        with poutine.block():
            post_trace = poutine.trace(posterior).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=post_trace)).get_trace(
                *args, **kwargs
            )
        guide_trace = poutine.trace(poutine.replay(guide, trace=post_trace)).get_trace(
            *args, **kwargs
        )
        sites = latent_sites(guide_trace)
        check_sites_match(sites, self.posterior.sites)
        # Score only what is read: the latent sites and the flagged observations.
        post_trace.compute_log_prob(site_filter=lambda name, _: name in sites)
        guide_trace.compute_log_prob(site_filter=lambda name, _: name in sites)
        model_trace.compute_log_prob(site_filter=lambda _, site: ERASED in site["infer"])
        return {
            "log_lik": erased_log_likelihood(model_trace, particle_dim, num_particles).detach(),
            "log_q": sum_sites_per_particle(post_trace, sites, particle_dim, num_particles),
            "log_q_v": sum_sites_per_particle(guide_trace, sites, particle_dim, num_particles),
        }

    def _objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        log_lik = self._adjusted(terms["log_lik"], terms["log_q"])
        weights = log_lik.numel() * torch.softmax(-log_lik, dim=0)
        self.ess = effective_sample_size(weights).detach()
        return -(weights.detach() * terms["log_q_v"]).mean()
