"""Comparing posteriors: closed-form KL between Gaussians and the Gaussian moments of a guide."""

from __future__ import annotations

import torch
from pyro.infer.autoguide import AutoContinuous, AutoNormal

__all__ = ["gaussian_kl", "guide_moments"]


def gaussian_kl(
    loc_p: torch.Tensor, cov_p: torch.Tensor, loc_q: torch.Tensor, cov_q: torch.Tensor
) -> torch.Tensor:
    r"""KL(N(μ_p, Σ_p) ‖ N(μ_q, Σ_q)) in closed form:

    .. math:: ½[\mathrm{tr}(Σ_q^{-1}Σ_p) + (μ_q−μ_p)^\top Σ_q^{-1}(μ_q−μ_p) − d
              + \log|Σ_q| − \log|Σ_p|]

    Example::

        >>> gaussian_kl(torch.zeros(1), torch.eye(1), torch.ones(1), torch.eye(1)).item()
        0.5
    """
    p = torch.distributions.MultivariateNormal(loc_p, covariance_matrix=cov_p)
    q = torch.distributions.MultivariateNormal(loc_q, covariance_matrix=cov_q)
    return torch.distributions.kl_divergence(p, q)


def guide_moments(guide: AutoContinuous | AutoNormal) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a Gaussian AutoGuide in its unconstrained latent space, flattened
    in the order of the model's latent sites (AutoNormal, AutoDiagonalNormal,
    AutoMultivariateNormal, AutoLowRankMultivariateNormal)."""
    if isinstance(guide, AutoNormal):
        locs, scales = [], []
        for name, _ in guide.prototype_trace.iter_stochastic_nodes():
            loc, scale = guide._get_loc_and_scale(name)
            locs.append(loc.detach().reshape(-1))
            scales.append(scale.detach().reshape(-1))
        return torch.cat(locs), torch.diag_embed(torch.cat(scales) ** 2)
    if not isinstance(guide, AutoContinuous):
        raise TypeError(f"guide_moments needs a Gaussian AutoGuide, got {type(guide).__name__}")
    posterior = guide.get_posterior()
    while isinstance(posterior, torch.distributions.Independent):
        posterior = posterior.base_dist
    if isinstance(posterior, torch.distributions.Normal):
        return posterior.mean.detach(), torch.diag_embed(posterior.variance.detach())
    return posterior.mean.detach(), posterior.covariance_matrix.detach()
