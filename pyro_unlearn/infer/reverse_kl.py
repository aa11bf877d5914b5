"""Reverse KL unlearning: self-normalised importance sampling from the frozen q(θ|D)."""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from ..handlers import ERASED, erased_log_likelihood
from ..traces import latent_sites, sum_sites_per_particle
from .base import UnlearningLoss
from .eubo import check_sites_match

__all__ = [
    "ImportanceWeights",
    "ReverseKL",
    "effective_sample_size",
    "next_temperature",
    "temperature_steps",
]


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """ESS = (Σw)² / Σw², between 1 (one particle carries all weight) and the particle count."""
    return weights.sum() ** 2 / (weights**2).sum()


def temperature_steps(dtype=None, device=None) -> torch.Tensor:
    """The fractions t of the remaining way to β = 1 that :func:`next_temperature` tries: 20
    per decade from 1e-8 to 1. The adjusted likelihood can make ℓ jump by 10⁴ nats between draws
    inside and outside its threshold, so a useful first step may be that small."""
    return torch.logspace(-8, 0, 161, dtype=dtype, device=device)


def next_temperature(
    log_base: torch.Tensor, log_lik: torch.Tensor, temperature, min_ess: float
) -> torch.Tensor:
    r"""The next temperature β' ∈ [β, 1] of an annealed importance-sampling target
    p̃_β ∝ q(θ|D) / p(D_e|θ)^β: the largest β' whose weights log w_s = ``log_base`` − β'·ℓ_s keep
    an ESS of at least ``min_ess`` (a fraction of the S particles); β itself if none does.
    ``log_base`` is log q(θ_s|D) − log r(θ_s) for the proposal r, ``log_lik`` ℓ_s = log
    p(D_e|θ_s). All candidates (β + (1 − β)·t, t from :func:`temperature_steps`) are scored in one
    tensor op, on the input's device.

        >>> log_lik = torch.randn(256) * 10.0  # ℓ varies by ±10 nats: β = 1 collapses the ESS
        >>> beta = next_temperature(torch.zeros(256), log_lik, 0.0, 0.5)
        >>> 0.0 < float(beta) < 1.0
        True
        >>> float(next_temperature(torch.zeros(256), torch.zeros(256), 0.0, 0.5))  # flat: done
        1.0
    """
    beta = torch.as_tensor(temperature, dtype=log_lik.dtype, device=log_lik.device)
    steps = temperature_steps(log_lik.dtype, log_lik.device)
    candidates = torch.cat([beta.reshape(1), beta + (1 - beta) * steps])
    log_w = log_base - candidates.unsqueeze(-1) * log_lik  # (candidates, S)
    log_ess = 2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1)
    ok = log_ess >= torch.log(torch.as_tensor(min_ess * log_lik.numel(), dtype=log_w.dtype))
    ok[0] = True  # β itself is always allowed: the step then refines q_v at β
    return candidates[ok].max()


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
    :class:`~pyro_unlearn.Trace_EUBO`, plus:

    Arguments:
        proposal: ``"posterior"`` (the paper's: θ_s ~ q(θ|D)) or ``"current"``: θ_s ~ q_v
            (detached), weights w_s ∝ q(θ_s|D) / (p_adj(D_e|θ_s) q_v(θ_s)), the loss
            −mean_s[(w_s − 1) · log q_v(θ_s)] (the − 1 is a control variate: E_{q_v}[∇ log q_v]
            = 0). The proposal follows q_v towards p̃, for erasures too informative to propose
            from q(θ|D), which is narrower than p̃.
        anneal: with ``proposal="current"``, an ESS fraction f ∈ (0, 1): the target is tempered,
            p̃_β ∝ q(θ|D)/p_adj(D_e|θ)^β, and each training step (gradients enabled) raises
            β (:attr:`temperature`) as far as the weights keep an ESS of f·S
            (:func:`next_temperature`). The loss is the rKL once β = 1; do not stop before.

    Attributes:
        ess: effective sample size (a 0-dim tensor) of the last evaluated step.
        temperature: β of the annealed target (1 without ``anneal``).
    """

    def __init__(self, posterior, lam=0.0, *, proposal="posterior", anneal=None, **kwargs):
        super().__init__(posterior, lam, **kwargs)
        self.weights = ImportanceWeights(proposal, anneal)

    @property
    def ess(self) -> torch.Tensor | None:
        return self.weights.ess

    @property
    def temperature(self) -> torch.Tensor:
        return self.weights.temperature

    def _particles(self, model, guide, posterior, args, kwargs, particle_dim, num_particles):
        # θ_s from the frozen q(θ|D) (the paper's), or from the current guide without gradient;
        # the other two programs are replayed at θ_s.
        source = guide if self.weights.proposal == "current" else posterior
        with poutine.block(), torch.no_grad():
            draw = poutine.trace(source).get_trace(*args, **kwargs)
        guide_trace = poutine.trace(poutine.replay(guide, trace=draw)).get_trace(*args, **kwargs)
        with poutine.block():
            post_trace = poutine.trace(poutine.replay(posterior, trace=draw)).get_trace(
                *args, **kwargs
            )
            model_trace = poutine.trace(poutine.replay(model, trace=draw)).get_trace(
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
        weights = self.weights(log_lik, terms["log_q"], terms["log_q_v"])
        return -(weights * terms["log_q_v"]).mean()


class ImportanceWeights:
    """The reverse KL's self-normalised importance weights and the state they carry between
    steps: the ``proposal`` (``"posterior"``: θ_s ~ q(θ|D), or ``"current"``: θ_s ~ q_v), the
    annealing :attr:`temperature` β (1 without ``anneal``) and the last step's :attr:`ess`.
    Shared by :class:`ReverseKL` and the GPyTorch objective.

    Calling it with ℓ_s = log p_adj(D_e|θ_s), log q(θ_s|D) and log q_v(θ_s) returns the weights
    (no gradient) of the loss −mean_s[w_s · log q_v(θ_s)]: from q(θ|D) w_s = S·softmax(−ℓ_s);
    from q_v S·softmax(log q(θ_s|D) − log q_v(θ_s) − β ℓ_s) − 1 (the − 1 a control variate:
    E_{q_v}[∇ log q_v] = 0), β first advanced by :func:`next_temperature` when ``anneal`` is
    set and gradients are enabled (a loss evaluated for monitoring does not anneal).
    """

    def __init__(self, proposal: str = "posterior", anneal: float | None = None) -> None:
        if proposal not in ("posterior", "current"):
            raise ValueError(f"proposal must be 'posterior' or 'current', got {proposal!r}")
        if anneal is not None and not (proposal == "current" and 0.0 < anneal < 1.0):
            raise ValueError(
                f"anneal is the ESS fraction kept while tempering, in (0, 1), and needs "
                f"proposal='current' (tempering from a fixed q(θ|D) never reaches β = 1); got "
                f"anneal={anneal!r}, proposal={proposal!r}"
            )
        self.proposal, self.anneal = proposal, anneal
        self.temperature = torch.tensor(0.0 if anneal is not None else 1.0)
        self.ess: torch.Tensor | None = None

    def __call__(
        self, log_lik: torch.Tensor, log_q: torch.Tensor, log_q_v: torch.Tensor
    ) -> torch.Tensor:
        training = torch.is_grad_enabled()
        with torch.no_grad():
            log_lik, log_q, log_q_v = log_lik.detach(), log_q.detach(), log_q_v.detach()
            current = self.proposal == "current"
            log_base = log_q - log_q_v if current else torch.zeros_like(log_lik)
            temperature = self.temperature.to(log_lik)
            if self.anneal is not None and training:
                temperature = next_temperature(log_base, log_lik, temperature, self.anneal)
            log_weights = log_base - temperature * log_lik
            weights = log_weights.numel() * torch.softmax(log_weights, dim=0)
            self.ess, self.temperature = effective_sample_size(weights), temperature
        return weights - 1.0 if current else weights
