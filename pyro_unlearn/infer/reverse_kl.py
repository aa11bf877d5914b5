"""Reverse KL unlearning: self-normalised importance sampling from the frozen q(θ|D)."""

from __future__ import annotations

import math
import warnings

import pyro.poutine as poutine
import torch

from ..handlers import erased_log_likelihood, is_erased
from ..posterior import FrozenPosterior
from ..traces import sum_sites_per_particle
from ..validation import check_in_unit_interval
from .base import UnlearningLoss

__all__ = [
    "ImportanceWeighted",
    "ImportanceWeights",
    "ReverseKL",
    "conditional_effective_sample_size",
    "effective_sample_size",
    "next_temperature",
    "temperature_steps",
]


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    r"""The effective sample size of importance weights:

    .. math:: \mathrm{ESS} = \Big(\sum_s w_s\Big)^2 \Big/ \sum_s w_s^2,

    between 1 (one particle carries all the weight) and the particle count (uniform weights).

    Arguments:
        weights: non-negative weights, shape ``(S,)``, normalised or not.

    Returns:
        A 0-dim tensor on the weights' device.

    References:
        A. Kong, J. S. Liu, W. H. Wong. Sequential Imputations and Bayesian Missing Data
        Problems. Journal of the American Statistical Association, 1994.

    Example:
        >>> effective_sample_size(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        tensor(4.)
        >>> effective_sample_size(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor(1.)
    """
    return weights.sum() ** 2 / (weights**2).sum()


def temperature_steps(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The fractions t of the remaining way to β = 1 that :func:`next_temperature` tries.

    20 per decade from 1e-8 to 1: the adjusted likelihood can make ℓ jump by 10⁴ nats between
    draws inside and outside its threshold, so a useful first step may be that small.

    Arguments:
        dtype: the dtype of the result.
        device: its device.

    Returns:
        A tensor of shape ``(161,)``, increasing, ending at 1.

    Example:
        >>> t = temperature_steps(torch.float64)
        >>> t.shape, float(t[0]), float(t[20]), float(t[-1])
        (torch.Size([161]), 1e-08, 1e-07, 1.0)
    """
    return torch.logspace(-8, 0, 161, dtype=dtype, device=device)


def conditional_effective_sample_size(
    log_weights: torch.Tensor, log_increments: torch.Tensor
) -> torch.Tensor:
    r"""The conditional effective sample size of a reweighting step of importance weights:

    .. math:: \mathrm{CESS} = S \Big(\sum_s W_s v_s\Big)^2 \Big/ \sum_s W_s v_s^2,

    W the normalised current weights, v_s the incremental weights. Between 1 and S; S for
    constant v (whatever W), the ESS of v for uniform W. It measures what the step costs, not
    how uneven W already is.

    Arguments:
        log_weights: the current log-weights, normalised or not, ``(S,)``.
        log_increments: log v_s, ``(S,)`` or a batch of steps ``(..., S)``.

    Returns:
        The CESS in particles, shape ``log_increments.shape[:-1]``.

    References:
        Y. Zhou, A. M. Johansen, J. A. D. Aston. Toward Automatic Model Comparison: An Adaptive
        Sequential Monte Carlo Approach. Journal of Computational and Graphical Statistics, 2016.

    Example:
        >>> log_w = torch.tensor([0.0, -1.0, -2.0, -3.0])
        >>> conditional_effective_sample_size(log_w, torch.full((4,), 0.7))  # constant v: S
        tensor(4.)
        >>> one = torch.tensor([0.0, -50.0, -50.0, -50.0])  # v: one draw carries the step
        >>> conditional_effective_sample_size(torch.zeros(4), one)
        tensor(1.)
    """
    log_w = torch.log_softmax(log_weights, -1)
    log_cess = 2 * torch.logsumexp(log_w + log_increments, -1) - torch.logsumexp(
        log_w + 2 * log_increments, -1
    )
    return log_weights.shape[-1] * log_cess.exp()


def next_temperature(
    log_base: torch.Tensor,
    log_lik: torch.Tensor,
    temperature: float | torch.Tensor,
    min_ess: float,
    *,
    min_current_ess: float = 0.7,
) -> torch.Tensor:
    r"""The next temperature β' ∈ [β, 1] of an annealed importance-sampling target
    p̃_β ∝ q(θ|D) / p(D_e|θ)^β, by the conditional effective sample size.

    With W_s the normalised weights at the current β (log W_s = ``log_base`` − β ℓ_s, normalised)
    and v_s = exp(−(β' − β) ℓ_s) the incremental weights of a step to β',

    .. math:: \mathrm{CESS}(β') = S \Big(\sum_s W_s v_s\Big)^2 \Big/ \sum_s W_s v_s^2,

    and β' is the largest candidate with CESS(β') ≥ ``min_ess``·S
    (:func:`conditional_effective_sample_size`; CESS(β) = S, so β itself always qualifies). The
    CESS prices the step alone, not how far the proposal already lags p̃_β: a guide that trails
    its target by a steady ESS deficit still advances, where the ESS of the weights at β' stalls
    once that deficit alone exceeds 1 − ``min_ess``. But a CESS over weights that one draw
    carries is S for every step, so β stays put while the ESS at β is below
    ``min_current_ess``·S and the guide must catch up first (on a 100-dimensional GPyTorch q(u)
    stepped by NGD the guide ran away, at fixed β, once its weights fell to 0.3–0.5 of S; at
    0.7 it stayed put). All candidates (β + (1 − β)·t, t from
    :func:`temperature_steps`) are scored in one tensor op, on the input's device.

    Arguments:
        log_base: log q(θ_s|D) − log r(θ_s) for the proposal r (zeros when r = q(θ|D)), ``(S,)``.
        log_lik: ℓ_s = log p_adj(D_e|θ_s), ``(S,)``.
        temperature: the current β.
        min_ess: the fraction of the S particles the CESS must keep, in (0, 1).
        min_current_ess: the fraction of S the ESS of the weights at β must reach before β may
            move.

    Returns:
        β' as a 0-dim tensor of ``log_lik``'s dtype and device.

    References:
        - Y. Zhou, A. M. Johansen, J. A. D. Aston. Toward Automatic Model Comparison: An Adaptive
          Sequential Monte Carlo Approach. Journal of Computational and Graphical Statistics,
          2016 (the conditional ESS).
        - A. Jasra, D. A. Stephens, A. Doucet, T. Tsagaris. Inference for Lévy-Driven Stochastic
          Volatility Models via Adaptive Sequential Monte Carlo. Scandinavian Journal of
          Statistics, 2011 (adaptive tempering).

    Example:
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
    log_v = -(candidates - beta).unsqueeze(-1) * log_lik  # (candidates, S)
    cess = conditional_effective_sample_size(log_base - beta * log_lik, log_v)
    ok = cess >= min_ess * log_lik.numel()
    log_w = log_base - beta * log_lik  # the weights at β: no step while they are too uneven
    ess = (2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1)).exp()
    ok &= ess >= min_current_ess * log_lik.numel()
    ok[0] = True  # β itself (CESS = S): the step then refines q_v at β
    return candidates[ok].max()


class ImportanceWeighted:
    """What every importance-weighted objective (:class:`ReverseKL`, the GPyTorch
    ``VariationalReverseKL``) reads off its :class:`ImportanceWeights` ``weights``."""

    weights: ImportanceWeights

    @property
    def ess(self) -> torch.Tensor | None:
        """The effective sample size of the last evaluated step (``None`` before the first)."""
        return self.weights.ess

    @property
    def temperature(self) -> torch.Tensor:
        """β of the annealed target (1 without ``anneal``)."""
        return self.weights.temperature


class ReverseKL(ImportanceWeighted, UnlearningLoss):
    r"""Unlearning by minimising the reverse KL divergence over q_v, started at q(θ|D):

    .. math:: \mathrm{KL}(\tilde p_\mathrm{adj} \,\|\, q_v), \qquad
              \tilde p_\mathrm{adj}(θ) \propto q(θ|D) \,/\, p_\mathrm{adj}(D_e|θ; λ).

    θ_s ~ q(θ|D) is drawn from the *frozen* posterior (no gradient), ℓ_s = log p_adj(D_e|θ_s),
    and the self-normalised weights w_s = S·softmax_s(−ℓ_s) (mean 1) give the loss
    −mean_s[w_s · log q_v(θ_s)] (the cross-entropy; no entropy term). Samples never come from
    where q(θ|D) is small, which curbs unlearning there even at λ = 0. The estimator is biased by
    O(1/num_particles); watch the effective sample size (:meth:`diagnostics`, :attr:`ess`): a
    collapsing ESS means D_e is too informative to importance-sample from q(θ|D). The guide need
    not be reparameterised.

    Arguments:
        posterior: the frozen q(θ|D) from :func:`pyro_unlearn.freeze`.
        lam: λ ∈ [0, 1]; 0 is the plain likelihood, 1 unlearns nothing.
        proposal: ``"posterior"`` (the paper's: θ_s ~ q(θ|D)) or ``"current"``: θ_s ~ q_v
            (detached), weights w_s ∝ q(θ_s|D) / (p_adj(D_e|θ_s) q_v(θ_s)), the loss
            −mean_s[(w_s − 1) · log q_v(θ_s)] (the − 1 is a control variate: E_{q_v}[∇ log q_v]
            = 0). The proposal follows q_v towards p̃, for erasures too informative to propose
            from q(θ|D), which is narrower than p̃.
        anneal: with ``proposal="current"``, an ESS fraction f ∈ (0, 1): the target is tempered,
            p̃_β ∝ q(θ|D)/p_adj(D_e|θ)^β, and each training step (gradients enabled) raises
            β (:attr:`temperature`) as far as the weights keep an ESS of f·S
            (:func:`next_temperature`). The loss is the rKL once β = 1; do not stop before.
        kwargs: ``num_particles``, ``vectorize_particles``, ``max_plate_nesting``,
            ``retain_graph``, as for :class:`~pyro_unlearn.Trace_EUBO`. ``num_particles`` must
            be ≥ 2 to reweight anything (Pyro's default 1 warns: one self-normalised weight is
            1, and the loss fits q(θ|D) itself); use 64 or more, vectorised.

    Attributes:
        ess: effective sample size (a 0-dim tensor) of the last evaluated step.
        temperature: β of the annealed target (1 without ``anneal``).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3.3.2: the reverse KL, eq. 9).

    Example:
        >>> import pyro, torch, pyro.distributions as dist
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
        >>> loss = pu.ReverseKL(pu.freeze(guide), num_particles=64, vectorize_particles=True)
        >>> svi = pyro.infer.SVI(pu.unlearn(model), guide, pyro.optim.Adam({"lr": 0.01}), loss)
        >>> _ = svi.step(y[:5])  # y[:5] is the erased data D_e
        >>> sorted(loss.diagnostics())
        ['ess', 'temperature']
    """

    def __init__(
        self,
        posterior: FrozenPosterior,
        lam: float = 0.0,
        *,
        proposal: str = "posterior",
        anneal: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(posterior, lam, **kwargs)
        self.weights = ImportanceWeights(proposal, anneal)
        if self.num_particles < 2:
            warnings.warn(
                f"ReverseKL(num_particles={self.num_particles}) self-normalises one importance "
                "weight to 1 at every step: nothing is reweighted, the loss fits q(θ|D) itself "
                "and the erased data are not unlearned; pass num_particles=64 (or more) and "
                "vectorize_particles=True",
                UserWarning,
                stacklevel=2,
            )

    def diagnostics(self) -> dict[str, float]:
        """``{"ess": ..., "temperature": ...}`` of the last evaluated step (see
        :meth:`ImportanceWeights.diagnostics`)."""
        return self.weights.diagnostics()

    def _trace_programs(self, model, guide, posterior, args, kwargs):
        # θ_s from the frozen q(θ|D) (the paper's), or from the current guide without gradient;
        # the other two programs are replayed at θ_s.
        source = guide if self.weights.proposal == "current" else posterior
        with poutine.block(), torch.no_grad():
            draw = poutine.trace(source).get_trace(*args, **kwargs)
        guide_trace = poutine.trace(poutine.replay(guide, trace=draw)).get_trace(*args, **kwargs)
        with poutine.block():
            posterior_trace = poutine.trace(poutine.replay(posterior, trace=draw)).get_trace(
                *args, **kwargs
            )
        self._check_pair(guide_trace, posterior_trace)
        with poutine.block():
            model_trace = poutine.trace(poutine.replay(model, trace=draw)).get_trace(
                *args, **kwargs
            )
        # Score only what is read: the latent sites and the flagged observations.
        sites = self.posterior.sites
        posterior_trace.compute_log_prob(site_filter=lambda name, _: name in sites)
        guide_trace.compute_log_prob(site_filter=lambda name, _: name in sites)
        model_trace.compute_log_prob(site_filter=is_erased)
        return model_trace, guide_trace, posterior_trace

    def _particle_terms(self, model_trace, guide_trace, posterior_trace, particle_dim, n):
        sites = self.posterior.sites
        return {
            "log_lik": erased_log_likelihood(model_trace, particle_dim, n).detach(),
            "log_q": sum_sites_per_particle(posterior_trace, sites, particle_dim, n),
            "log_q_v": sum_sites_per_particle(guide_trace, sites, particle_dim, n),
        }

    def _objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        log_lik = self._adjusted(terms["log_lik"], terms["log_q"])
        weights = self.weights(log_lik, terms["log_q"], terms["log_q_v"])
        return -(weights * terms["log_q_v"]).mean()


class ImportanceWeights:
    r"""The reverse KL's self-normalised importance weights and the state they carry between
    steps; shared by :class:`ReverseKL` and the GPyTorch objective.

    Called with ℓ_s = log p_adj(D_e|θ_s), log q(θ_s|D) and log q_v(θ_s), it returns the weights
    (no gradient) of the loss −mean_s[w_s · log q_v(θ_s)]:

    .. math:: w_s = S\,\mathrm{softmax}_s(−ℓ_s) \quad (θ_s \sim q(θ|D)), \qquad
              w_s = S\,\mathrm{softmax}_s(\log q(θ_s|D) − \log q_v(θ_s) − β ℓ_s) − 1
              \quad (θ_s \sim q_v),

    the − 1 a control variate (E_{q_v}[∇ log q_v] = 0). With ``anneal``, β is first advanced by
    :func:`next_temperature` when gradients are enabled (a loss evaluated for monitoring does
    not anneal). Every call records the ESS of the weights.

    Arguments:
        proposal: ``"posterior"`` (θ_s ~ q(θ|D)) or ``"current"`` (θ_s ~ q_v).
        anneal: the ESS fraction in (0, 1) kept while tempering (``proposal="current"`` only), or
            ``None``: no tempering, β = 1.

    Raises:
        TypeError: for an ``anneal`` that is not a real number.
        ValueError: for an unknown ``proposal``, an ``anneal`` outside (0, 1) or without
            ``proposal="current"``.

    Attributes:
        proposal: as given.
        anneal: as given.
        temperature: β, a 0-dim tensor (0 at the start with ``anneal``, else 1).
        ess: the ESS of the last call (a 0-dim tensor), ``None`` before the first.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:
        >>> weights = ImportanceWeights()
        >>> weights(torch.zeros(4), torch.zeros(4), torch.zeros(4))  # ℓ constant: uniform
        tensor([1., 1., 1., 1.])
        >>> weights.diagnostics()
        {'ess': 4.0, 'temperature': 1.0}
    """

    def __init__(self, proposal: str = "posterior", anneal: float | None = None) -> None:
        if not isinstance(proposal, str) or proposal not in ("posterior", "current"):
            raise ValueError(f"proposal must be 'posterior' or 'current', got {proposal!r}")
        if anneal is not None:
            anneal = check_in_unit_interval("anneal", anneal, open_left=True)
        if anneal is not None and not (proposal == "current" and anneal < 1.0):
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

    def diagnostics(self) -> dict[str, float]:
        """The last call's ``{"ess": ESS, "temperature": β}`` as floats (ESS nan before the
        first call): the keys every importance-weighted objective reports."""
        ess = math.nan if self.ess is None else float(self.ess)
        return {"ess": ess, "temperature": float(self.temperature)}
