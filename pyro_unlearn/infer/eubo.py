"""The evidence upper bound (EUBO) with the adjusted likelihood."""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.infer.enum import get_importance_trace

from ..handlers import erased_log_likelihood
from ..traces import latent_sites, sum_sites_per_particle
from .base import UnlearningLoss

__all__ = ["Trace_EUBO"]


class Trace_EUBO(UnlearningLoss):
    r"""Unlearning by minimising the evidence upper bound over q_u, started at q(θ|D):

    .. math:: U(q_u) = \mathbb{E}_{q_u}[\log p_\mathrm{adj}(D_e|θ)] + \mathrm{KL}(q_u \,\|\, q(θ|D))

    estimated with θ_s ~ q_u (reparameterised) as
    mean_s [log p_adj(D_e|θ_s) + log q_u(θ_s) − log q(θ_s|D)], densities in the guide's
    unconstrained space. Minimising U minimises KL(q_u ‖ p̃_adj) with p̃_adj ∝ q(θ|D)/p_adj(D_e|θ):
    mode-seeking, and with λ → 0 on informative erasures it can unlearn catastrophically
    (prefer :class:`~pyro_unlearn.ReverseKL` there). Needs a reparameterised guide (checked
    under validation). :meth:`diagnostics` is empty.

    Arguments:
        posterior: the frozen q(θ|D) from :func:`pyro_unlearn.freeze`.
        lam: λ ∈ [0, 1]; 0 is the plain likelihood, 1 unlearns nothing.
        num_particles: draws of θ per step.
        vectorize_particles: draw them in one vectorised plate instead of a Python loop.
        max_plate_nesting: as in Pyro's losses (guessed on the first step when infinite).
        retain_graph: passed to ``backward`` in ``loss_and_grads``.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3.3.1: the EUBO with the adjusted likelihood, eqs. 6 and 8).

    Example:

        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer import SVI
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_unlearn as pu
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = AutoNormal(model)
        >>> y = torch.randn(20)
        >>> guide(y)  # (train it with Trace_ELBO here)  # doctest: +ELLIPSIS
        {...}
        >>> posterior = pu.freeze(guide)
        >>> svi = SVI(pu.unlearn(model), guide, pyro.optim.Adam({"lr": 0.01}),
        ...           pu.Trace_EUBO(posterior, lam=1e-3, num_particles=8, vectorize_particles=True))
        >>> loss = svi.step(y[:5])  # y[:5] is the erased data D_e
    """

    def _trace_programs(self, model, guide, posterior, args, kwargs):
        # θ ~ q_u, reparameterised: Pyro's importance trace (its own checks under validation).
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        with poutine.block():
            posterior_trace = poutine.trace(poutine.replay(posterior, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        self._check_pair(guide_trace, posterior_trace)
        sites = self.posterior.sites
        posterior_trace.compute_log_prob(site_filter=lambda name, _: name in sites)
        return model_trace, guide_trace, posterior_trace

    def _check_traces(self, model_trace, guide_trace, posterior_trace):
        super()._check_traces(model_trace, guide_trace, posterior_trace)
        sites = latent_sites(guide_trace)
        not_reparam = [n for n in sites if not guide_trace.nodes[n]["fn"].has_rsample]
        if not_reparam:
            raise ValueError(
                f"Trace_EUBO needs a reparameterised guide; sites {not_reparam} are not "
                "(use ReverseKL, which never differentiates through samples)"
            )

    def _particle_terms(self, model_trace, guide_trace, posterior_trace, particle_dim, n):
        sites = self.posterior.sites
        return {
            "log_lik": erased_log_likelihood(model_trace, particle_dim, n),
            "log_q": sum_sites_per_particle(posterior_trace, sites, particle_dim, n),
            "log_q_u": sum_sites_per_particle(guide_trace, sites, particle_dim, n),
        }

    def _objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        log_q = terms["log_q"]
        log_lik = self._adjusted(terms["log_lik"], log_q.detach())
        return (log_lik + terms["log_q_u"] - log_q).mean()
