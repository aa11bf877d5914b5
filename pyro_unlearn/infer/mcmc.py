"""Unlearning MCMC posteriors: importance reweighting of θ_s ~ p(θ|D), resampling, rejuvenation."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..results import UnlearningResult
from ..validation import check_finite_data
from .hmc import hmc_moves, whitening
from .mcmc_checks import (
    MIN_DRAWS,
    RejuvenationOptions,
    check_enough_draws,
    check_likelihood_depends,
    check_options,
    flatten_samples,
    rejuvenation_options,
    resolve_generator,
)
from .particles import ParticleModel
from .reverse_kl import effective_sample_size

if TYPE_CHECKING:
    import arviz

    from ..trust import Caveats

__all__ = ["MIN_ACCEPTANCE", "MIN_DRAWS", "LowESSWarning", "MCMCUnlearnResult", "mcmc_unlearn"]

#: The lowest mean HMC acceptance rate at which a rejuvenated result counts as converged: below
#: it most moves are rejected and the duplicates that resampling made stay duplicates.
MIN_ACCEPTANCE = 0.25


class LowESSWarning(UserWarning):
    """The weights of :func:`mcmc_unlearn` have collapsed: ESS/S is below the threshold."""


@dataclass
class MCMCUnlearnResult(UnlearningResult):
    """What :func:`mcmc_unlearn` returns.

    Attributes:
        samples: site → tensor (S', ...) of draws from p(θ|D_r): the resampled (and, if
            rejuvenated, moved) particles, or a copy of the input draws when ``resample=None``
            (then use ``weights``). Also :attr:`posterior`.
        log_weights: normalised log w_s (logsumexp 0), one per *input* draw (chains flattened).
        weights: w_s = exp(log_weights), summing to 1.
        log_likelihood: ℓ_s = log p(D_e|θ_s) per input draw.
        ess: effective sample size (Σw)²/Σw² = 1/Σw² of the weights.
        ess_fraction: ess / S.
        indices: (S',) input draws picked by resampling (``None`` without resampling).
        num_unique: distinct input draws among the resampled ones (S without resampling).
        resampling: "systematic", "multinomial" or ``None``.
        rejuvenated: whether HMC moves on D_r followed the resampling.
        num_moves: HMC moves per particle (0 without rejuvenation).
        acceptance_rate: mean Metropolis acceptance probability over all moves and particles.
        step_size: the leapfrog step size (whitened space) after adaptation.
        seconds: wall time.
        converged: ESS/S ≥ ``ess_threshold`` (no :class:`LowESSWarning`) and, when rejuvenated,
            ``acceptance_rate`` ≥ :data:`MIN_ACCEPTANCE`.
    """

    samples: dict[str, torch.Tensor]
    log_weights: torch.Tensor
    weights: torch.Tensor
    log_likelihood: torch.Tensor
    ess: float
    ess_fraction: float
    indices: torch.Tensor | None
    num_unique: int
    resampling: str | None
    rejuvenated: bool = False
    num_moves: int = 0
    acceptance_rate: float | None = None
    step_size: float | None = None

    @property
    def posterior(self) -> dict[str, torch.Tensor]:
        """The draws of p(θ|D_r), site → (S', ...): ``samples`` (weighted by ``weights`` when
        ``resample=None``)."""
        return self.samples

    def to_inference_data(self) -> arviz.InferenceData:
        """The draws as ArviZ ``InferenceData`` (one chain, ``samples`` in the posterior group).
        Without resampling the draws are weighted: ``sample_stats.log_weight`` holds the
        normalised log-weights. The diagnostics are in ``attrs``."""
        import arviz as az

        num = next(iter(self.samples.values())).shape[0]
        posterior = {
            name: value.detach().reshape(1, num, *value.shape[1:]).cpu().numpy()
            for name, value in self.samples.items()
        }
        stats = None
        if self.indices is None:
            stats = {"log_weight": self.log_weights.detach().reshape(1, -1).cpu().numpy()}
        attrs = {
            "unlearning": "pyro_unlearn.mcmc_unlearn",
            "ess": self.ess,
            "ess_fraction": self.ess_fraction,
            "resampling": self.resampling or "none",
            "rejuvenated": int(self.rejuvenated),
            "num_moves": self.num_moves,
        }
        return az.from_dict(posterior=posterior, sample_stats=stats, attrs=attrs)


# -- the steps: reweight, resample, rejuvenate ----------------------------------------------------
def _reweight(
    particles: ParticleModel, draws: dict[str, torch.Tensor], ess_threshold: float, progress: bool
) -> MCMCUnlearnResult:
    """log w_s = −ℓ_s − logsumexp(−ℓ), the ESS and its warning; the draws unresampled."""
    S = next(iter(draws.values())).shape[0]
    log_lik = particles.erased_log_likelihood(draws, progress)
    bad = ~torch.isfinite(log_lik)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"log p(D_e|θ_s) is not finite for {int(bad.sum())} of {S} draws (first: draw "
            f"{first}, value {float(log_lik[first])}): such a θ_s cannot be a draw of p(θ|D), "
            "or the draws are corrupt (NaN)"
        )
    check_likelihood_depends(draws, log_lik)
    log_weights = torch.log_softmax(-log_lik, dim=0)
    weights = log_weights.exp()
    ess = float(effective_sample_size(weights))
    if ess / S < ess_threshold:
        warnings.warn(
            f"MCMC unlearning: the effective sample size {ess:.1f} of {S} draws "
            f"(ESS/S = {ess / S:.3g}) is below the threshold ess_threshold = {ess_threshold}: "
            "D_e is too informative to reweight p(θ|D) reliably and the unlearned estimates "
            "carry a large Monte-Carlo error. Draw more samples, rejuvenate on D_r, or rerun "
            "MCMC on D_r",
            LowESSWarning,
            stacklevel=3,
        )
    return MCMCUnlearnResult(
        samples={k: v.clone() for k, v in draws.items()},
        log_weights=log_weights,
        weights=weights,
        log_likelihood=log_lik,
        ess=ess,
        ess_fraction=ess / S,
        indices=None,
        num_unique=S,
        resampling=None,
    )


def _resample_indices(
    weights: torch.Tensor, num: int, method: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Indices of ``num`` draws: systematic (one uniform, stratified cdf) or multinomial."""
    if method == "multinomial":
        return torch.multinomial(weights, num, replacement=True, generator=generator)
    cdf = torch.cumsum(weights.double(), 0)  # float64: float32 cdfs drift over many draws
    offset = torch.rand((), generator=generator, device=weights.device, dtype=cdf.dtype)
    points = (offset + torch.arange(num, device=weights.device, dtype=cdf.dtype)) / num
    points = points * cdf[-1]
    return torch.searchsorted(cdf, points, right=True).clamp_(max=len(weights) - 1)


def _resample(result: MCMCUnlearnResult, draws, num: int, method: str, generator) -> None:
    indices = _resample_indices(result.weights, num, method, generator)
    result.samples = {k: v.index_select(0, indices) for k, v in draws.items()}
    result.indices, result.resampling = indices, method
    result.num_unique = int(indices.unique().numel())


def _rejuvenate(
    particles: ParticleModel,
    draws: dict[str, torch.Tensor],
    result: MCMCUnlearnResult,
    config: RejuvenationOptions,
    args: tuple,
    kwargs: dict,
    generator: torch.Generator | None,
    progress: bool,
) -> None:
    """HMC moves of the resampled particles targeting p(θ|D_r), in the unconstrained space."""
    discrete = [s.name for s in particles.sites if s.transform is None]
    if discrete:
        raise ValueError(f"rejuvenation (HMC) needs continuous latents; {discrete} are discrete")
    if not all(draws[name].is_floating_point() for name in particles.latents):
        raise ValueError("rejuvenation (HMC) needs floating-point draws of every latent site")
    if config.args is None and config.kwargs is None:
        target, t_args, t_kwargs, drop = particles.model, args, kwargs, True
    else:
        target, drop = particles.raw, False  # the model on D_r: every observation counts
        t_args, t_kwargs = tuple(config.args or ()), dict(config.kwargs or {})
    mass = config.mass_matrix or ("dense" if particles.dim <= 200 else "diagonal")
    with torch.no_grad():
        u_all = particles.unconstrain({k: draws[k] for k in particles.latents})
        mean, chol = whitening(u_all, result.weights, result.ess, mass)
        u = u_all.index_select(0, result.indices)
        if not bool(torch.isfinite(u).all()):
            raise ValueError(
                "a resampled draw lies on the boundary of its site's support (infinite in the "
                "unconstrained space): it cannot be moved by HMC"
            )

    def log_target(v):
        return particles.log_target_and_grad(v, target, t_args, t_kwargs, drop)

    u, rate, step = hmc_moves(
        log_target,
        u,
        mean,
        chol,
        num_moves=int(config.num_moves),
        step_size=config.step_size,
        trajectory_length=config.trajectory_length,
        max_leapfrog=int(config.max_leapfrog),
        target_accept=float(config.target_accept),
        generator=generator,
        progress=progress,
    )
    with torch.no_grad():
        values, _ = particles.constrain(u)
    result.samples = {k: v.reshape(len(u), *draws[k].shape[1:]) for k, v in values.items()}
    result.rejuvenated, result.num_moves = True, int(config.num_moves)
    result.acceptance_rate, result.step_size = rate, step


# -- the public function --------------------------------------------------------------------------
def mcmc_unlearn(
    model: Callable,
    samples: Any,
    *args: Any,
    erased: Any = None,
    plate: str | Mapping[str, str] | None = None,
    resample: str | None = "systematic",
    num_samples: int | None = None,
    ess_threshold: float = 0.1,
    rejuvenate: bool | Mapping[str, Any] | None = None,
    vectorize: str = "vmap",
    chunk_size: int = 1024,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    diagnose: bool = True,
    **kwargs: Any,
) -> MCMCUnlearnResult:
    r"""Unlearn D_e from MCMC draws θ_s ~ p(θ|D) by importance reweighting (exact as S → ∞).

    .. math:: p(θ|D_r) ∝ \frac{p(θ|D)}{p(D_e|θ)}, \qquad
              \log w_s = −ℓ_s − \mathrm{logsumexp}_{s'}(−ℓ_{s'}), \quad ℓ_s = \log p(D_e|θ_s),
              \qquad \mathrm{ESS} = 1 / \textstyle\sum_s w_s^2

    Three steps, as in resample-move particle methods: **reweight** (ℓ_s is read by running
    ``unlearn(model, erased=erased, plate=plate)`` with the latent sites conditioned on the
    draws, ``chunk_size`` draws at a time), **resample** ``num_samples`` equally weighted
    particles, and optionally **rejuvenate** them by HMC moves that leave p(θ|D_r) ∝ p(θ)
    p(D_r|θ) invariant, all particles batched in the unconstrained space (Pyro's MCMC runs one
    chain at a time, so its kernels are not used). The mass matrix is the importance-weighted
    covariance of the draws; the step size adapts between moves.

    Every argument is checked before anything runs (the options' types and ranges, the data
    and D_r for rejuvenation finite, the draws' sites, shapes and finiteness, enough of them:
    :data:`MIN_DRAWS`); the input draws are never modified.

    If ESS/S < ``ess_threshold`` a :class:`LowESSWarning` says that D_e is too informative to
    reweight p(θ|D): the estimates carry a large Monte-Carlo error. For sequential requests keep
    the original draws and unlearn the union of all erased data from them, rather than
    reweighting an already unlearned result.

    Then the result is judged without D_r (``diagnose=True``): the reweighting is importance
    sampling from p(θ|D)'s draws, so the PSIS k̂ and ESS of its own weights over all S draws
    are the evidence (:func:`pyro_unlearn.trust.diagnose_draws`: no new draws, and NaN KL
    fields, draws having no density); ``verdict`` is ``"retrain"`` for ESS/S < 1 % or k̂ >
    min(1 − 1/log₁₀ S, 0.7), at most ``"approximate"`` for k̂ ≥ 0.5 or an unconverged result
    (:func:`pyro_unlearn.trust.weighted_verdict`), ``None`` below 100 draws.

    Arguments:
        model: the Pyro model p(θ) p(D|θ).
        samples: θ_s ~ p(θ|D): a ``pyro.infer.MCMC`` that has run
            (``get_samples(group_by_chain=False)``), an ``arviz.InferenceData`` (its posterior
            group, chains flattened chain by chain) or a dict site → tensor (S, ...) of
            constrained draws; never modified. Variables that are no latent site of the model
            (e.g. deterministic ones) are carried along. At least :data:`MIN_DRAWS` draws, and
            more than 1/``ess_threshold``; all finite (a NaN draw is named by its site and
            index).
        *args, **kwargs: the model's arguments: the erased data alone with ``erased=None``, or
            the full data with the erased rows of ``plate``.
        erased, plate: which observations are D_e, as for :func:`~pyro_unlearn.unlearn`.
        resample: "systematic", "multinomial" or ``None`` (weighted draws, see ``weights``).
        num_samples: particles to resample (default S).
        ess_threshold: the ESS/S below which :class:`LowESSWarning` is raised (and the result
            does not count as converged).
        rejuvenate: ``True`` or a dict with keys ``num_moves``, ``args``, ``kwargs``,
            ``step_size``, ``trajectory_length``, ``max_leapfrog``, ``target_accept``,
            ``mass_matrix``. The HMC target is the model on ``rejuvenate["args"]`` /
            ``["kwargs"]`` (D_r), or, when they are not given and ``erased`` names rows of a
            plate, the model on ``*args`` without the erased rows. Needs continuous latents and
            drops carried non-latent variables.
        vectorize: "vmap" batches any model with ``torch.func.vmap``; "plate" wraps the model in
            a plate left of its own (it must broadcast, as for ``vectorize_particles``).
        chunk_size: draws per model run.
        seed, generator: the randomness of resampling and HMC, on the draws' device (not both).
        progress: progress bars.
        diagnose: attach the trust diagnostics and verdict to the result.

    Returns:
        an :class:`MCMCUnlearnResult`: ``samples`` (= ``posterior``), the weights, the ESS and
        the HMC diagnostics; ``converged`` when ESS/S ≥ ``ess_threshold`` and, if rejuvenated,
        the mean acceptance rate is at least :data:`MIN_ACCEPTANCE`; ``verdict``, ``trust``
        and ``summary()``.

    References:
        A. E. Gelfand, D. K. Dey, H. Chang. Model Determination Using Predictive Distributions
        with Implementation via Sampling-Based Methods. Bayesian Statistics 4, 1992 (case
        deletion by the weights 1/p(D_e|θ_s)).

        A. Kong, J. S. Liu, W. H. Wong. Sequential Imputations and Bayesian Missing Data
        Problems. Journal of the American Statistical Association, 1994 (the ESS).

        W. R. Gilks, C. Berzuini. Following a Moving Target — Monte Carlo Inference for Dynamic
        Bayesian Models. Journal of the Royal Statistical Society B, 2001 (resample-move).

        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (p(θ|D_r) ∝ p(θ|D)/p(D_e|θ)).

        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry. Pareto Smoothed Importance
        Sampling. JMLR 25(72), 2024.

    Example:
        y_n ~ N(θ, 1), θ ~ N(0, 1); forgetting y₃ = 2 leaves p(θ|D_r) = N(1/3, 1/3):

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(theta, 1.0), obs=y)
        >>> y = torch.tensor([0.0, 1.0, 2.0])
        >>> pyro.set_rng_seed(0)
        >>> draws = {"theta": dist.Normal(0.75, 0.5).sample((20000,))}  # exact p(θ|D)
        >>> result = mcmc_unlearn(model, draws, y, erased=[2], plate="data", seed=0)
        >>> round(result.ess_fraction, 1), result.converged  # 1 / E[w²] = 1/3 as S → ∞
        (0.3, True)
        >>> result.verdict != "retrain"  # k̂ ≈ 0.5: one of three points is a large update
        True
        >>> theta = result.posterior["theta"]
        >>> bool(abs(theta.mean() - 1 / 3) < 0.02), bool(abs(theta.var() - 1 / 3) < 0.02)
        (True, True)
    """
    from ..trust import attach_draws_trust  # trust imports this package

    start = time.perf_counter()
    if not isinstance(diagnose, bool):
        raise TypeError(f"diagnose must be True or False, got {type(diagnose).__name__}")
    if "diagnose_samples" in kwargs:  # not the model's: the other methods' option
        raise TypeError(
            "mcmc_unlearn diagnoses the weights of all S draws it was given (no new draws): "
            "diagnose_samples is for the methods that draw from a posterior"
        )
    ess_threshold, chunk_size, num_samples, seed = check_options(
        resample, vectorize, ess_threshold, chunk_size, num_samples, seed, generator
    )
    config = rejuvenation_options(rejuvenate, erased)
    if config is not None and resample is None:
        raise ValueError("rejuvenation moves resampled particles: pass resample='systematic'")
    check_finite_data(args, kwargs)
    draws = flatten_samples(samples)
    generator = resolve_generator(draws, seed, generator)
    particles = ParticleModel(model, draws, args, kwargs, erased, plate, vectorize, chunk_size)
    if not particles.latents:
        raise ValueError(f"samples {sorted(draws)} name no latent site of the model")
    check_enough_draws(draws, ess_threshold)
    result = _reweight(particles, draws, ess_threshold, progress)
    if resample is not None:
        num = len(result.weights) if num_samples is None else num_samples
        _resample(result, draws, num, resample, generator)
    if config is not None:
        _rejuvenate(particles, draws, result, config, args, kwargs, generator, progress)
    moved = not result.rejuvenated or result.acceptance_rate >= MIN_ACCEPTANCE
    result.converged = result.ess_fraction >= float(ess_threshold) and moved
    result.seconds = time.perf_counter() - start
    if not diagnose:
        result.explanation = "not diagnosed: mcmc_unlearn(..., diagnose=False)"
        return result
    return attach_draws_trust(
        result, result.log_likelihood, caveats=_caveats(result, float(ess_threshold))
    )


def _caveats(result: MCMCUnlearnResult, ess_threshold: float) -> Caveats:
    """What the reweighting cannot vouch for: an ESS below the caller's threshold, rejected HMC
    moves; and a note of the rejuvenation."""
    from ..trust import Caveats

    approximate, notes = [], []
    if result.ess_fraction < ess_threshold:
        approximate.append(f"ESS/S = {result.ess_fraction:.3g} < ess_threshold = {ess_threshold:g}")
    if result.rejuvenated:
        rate = f"{result.num_moves} HMC moves on D_r, acceptance {result.acceptance_rate:.2f}"
        if result.acceptance_rate < MIN_ACCEPTANCE:
            approximate.append(f"{rate} < {MIN_ACCEPTANCE}: the duplicates stayed")
        else:
            notes.append(f"then {rate}")
    return Caveats(approximate=approximate, notes=notes)
