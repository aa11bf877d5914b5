"""The evidence upper bound (EUBO) with the adjusted likelihood."""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.infer.enum import get_importance_trace

from ..handlers import erased_log_likelihood
from ..traces import latent_sites, sum_sites_per_particle
from .base import UnlearningLoss

__all__ = ["Trace_EUBO"]


def check_sites_match(guide_sites: list[str], posterior_sites: list[str]) -> None:
    """The frozen posterior must score exactly the sites the guide samples."""
    if set(guide_sites) != set(posterior_sites):
        raise ValueError(
            "the frozen posterior cannot score this guide: the guide's sites "
            f"{sorted(guide_sites)} differ from the posterior's {sorted(posterior_sites)}; "
            "freeze a trained guide of the same structure (same class, model and name)"
        )


class Trace_EUBO(UnlearningLoss):
    r"""Unlearning by minimising the evidence upper bound over q_u, started at q(θ|D):

    .. math:: U(q_u) = \mathbb{E}_{q_u}[\log p_\mathrm{adj}(D_e|θ)] + \mathrm{KL}(q_u \,\|\, q(θ|D))

    estimated with θ_s ~ q_u (reparameterised) as
    mean_s [log p_adj(D_e|θ_s) + log q_u(θ_s) − log q(θ_s|D)], densities in the guide's
    unconstrained space. Minimising U minimises KL(q_u ‖ p̃_adj) with p̃_adj ∝ q(θ|D)/p_adj(D_e|θ):
    mode-seeking, and with λ → 0 on informative erasures it can unlearn catastrophically
    (prefer :class:`~pyro_unlearn.ReverseKL` there). Needs a reparameterised guide.

    Arguments:
        posterior: the frozen q(θ|D) from :func:`pyro_unlearn.freeze`.
        lam: λ ∈ [0, 1]; 0 is the plain likelihood, 1 unlearns nothing.

    Example::

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

    def _particles(self, model, guide, posterior, args, kwargs, particle_dim, num_particles):
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        sites = latent_sites(guide_trace)
        not_reparam = [n for n in sites if not guide_trace.nodes[n]["fn"].has_rsample]
        if not_reparam:
            raise ValueError(
                f"Trace_EUBO needs a reparameterised guide; sites {not_reparam} are not "
                "(use ReverseKL, which never differentiates through samples)"
            )
        check_sites_match(sites, self.posterior.sites)
        with poutine.block():
            scored = poutine.trace(poutine.replay(posterior, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        scored.compute_log_prob(site_filter=lambda name, _: name in sites)  # only what is read
        return {
            "log_lik": erased_log_likelihood(model_trace, particle_dim, num_particles),
            "log_q": sum_sites_per_particle(scored, sites, particle_dim, num_particles),
            "log_q_u": sum_sites_per_particle(guide_trace, sites, particle_dim, num_particles),
        }

    def _objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        log_q = terms["log_q"]
        log_lik = self._adjusted(terms["log_lik"], log_q.detach())
        return (log_lik + terms["log_q_u"] - log_q).mean()
