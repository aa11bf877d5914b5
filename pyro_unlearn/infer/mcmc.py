"""Unlearning MCMC posteriors: importance reweighting of θ_s ~ p(θ|D), resampling, rejuvenation."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from torch.func import grad_and_value, vmap
from tqdm import tqdm

from ..handlers import ERASED, erased_log_likelihood, unlearn
from ..traces import max_plate_nesting, subsampled_plates, sum_per_particle
from .reverse_kl import effective_sample_size

if TYPE_CHECKING:
    import arviz

__all__ = ["LowESSWarning", "MCMCUnlearnResult", "mcmc_unlearn"]

RESAMPLING = ("systematic", "multinomial")
VECTORIZE = ("vmap", "plate")
_REJUVENATE_KEYS = {
    "num_moves": "HMC moves per particle (default 5)",
    "args": "the model's positional arguments for D_r",
    "kwargs": "the model's keyword arguments for D_r",
    "step_size": "initial leapfrog step in the whitened space (default 0.8·P^(-1/4))",
    "trajectory_length": "leapfrog steps × step size (default π/2)",
    "max_leapfrog": "cap on leapfrog steps per move (default 64)",
    "target_accept": "acceptance rate the step size is adapted to (default 0.8)",
    "mass_matrix": "'dense' or 'diagonal' (default dense up to 200 latents)",
}


class LowESSWarning(UserWarning):
    """The weights of :func:`mcmc_unlearn` have collapsed: ESS/S is below the threshold."""


@dataclass
class MCMCUnlearnResult:
    """What :func:`mcmc_unlearn` returns.

    Attributes:
        samples: site → tensor (S', ...) of draws from p(θ|D_r): the resampled (and, if
            rejuvenated, moved) particles, or a copy of the input draws when ``resample=None``
            (then use ``weights``).
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
    seconds: float = 0.0

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


@dataclass
class _Rejuvenation:
    num_moves: int = 5
    args: tuple | None = None
    kwargs: dict | None = None
    step_size: float | None = None
    trajectory_length: float = math.pi / 2
    max_leapfrog: int = 64
    target_accept: float = 0.8
    mass_matrix: str | None = None


# -- the input draws ------------------------------------------------------------------------------
def _flatten_samples(samples: Any) -> dict[str, torch.Tensor]:
    """site → (S, ...) from an MCMC object, an InferenceData (chains flattened) or a dict."""
    from pyro.infer import MCMC

    if isinstance(samples, MCMC):
        try:
            draws = samples.get_samples(group_by_chain=False)
        except AttributeError:
            raise ValueError("the MCMC object has no samples: call mcmc.run(...) first") from None
    elif type(samples).__module__.startswith("arviz"):
        if "posterior" not in samples.groups():
            raise ValueError("the InferenceData has no posterior group to unlearn")
        device = torch.get_default_device()
        draws = {}
        for name, array in samples.posterior.data_vars.items():
            values = array.transpose("chain", "draw", ...).values
            draws[str(name)] = torch.as_tensor(values, device=device).reshape(-1, *values.shape[2:])
    elif isinstance(samples, Mapping):
        draws = {str(k): torch.as_tensor(v).detach() for k, v in samples.items()}
    else:
        raise TypeError(
            "samples must be a pyro.infer.MCMC, an arviz.InferenceData or a dict site → "
            f"tensor (S, ...), got {type(samples).__name__}"
        )
    if not draws:
        raise ValueError("samples hold no sites: there is nothing to reweight")
    sizes = {name: (v.shape[0] if v.dim() else None) for name, v in draws.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(
            f"every site needs the same number of draws along dim 0, got {sizes} (site: draws)"
        )
    if next(iter(sizes.values())) == 0:
        raise ValueError("samples are empty (0 draws)")
    return draws


# -- the model at many θ --------------------------------------------------------------------------
class _ConditionLatents(Messenger):
    """Condition the model's *latent* sites on given values (an observed site is never
    overridden) and record what was conditioned and which given names are observed data."""

    def __init__(self, data: Mapping[str, torch.Tensor], check_shapes: bool = False) -> None:
        super().__init__()
        self.data, self.conditioned, self.observed = data, set(), set()
        self.check_shapes = check_shapes

    def _pyro_sample(self, msg) -> None:
        name = msg["name"]
        if name not in self.data or site_is_subsample(msg) or msg["infer"].get("_deterministic"):
            return
        if msg["is_observed"]:
            self.observed.add(name)
            return
        value = self.data[name]
        if self.check_shapes and value.shape != msg["fn"].shape():
            raise ValueError(
                f"site {name!r} has shape {tuple(msg['fn'].shape())} in the model, but its draws "
                f"have shape {tuple(value.shape)} (after the draw dim)"
            )
        msg["value"], msg["is_observed"] = value, True
        self.conditioned.add(name)


@dataclass
class _Site:
    name: str
    shape: torch.Size  # constrained, one draw
    event_dim: int
    transform: torch.distributions.Transform  # unconstrained → constrained
    ushape: torch.Size  # unconstrained, one draw
    start: int
    stop: int


class _Model:
    """The model run under :func:`unlearn` at many θ at once: ``torch.func.vmap`` over draws, or
    a ``pyro.plate`` left of the model's plates (the model must then broadcast)."""

    def __init__(self, model, draws, args, kwargs, erased, plate, vectorize) -> None:
        self.raw, self.model = model, unlearn(model, erased=erased, plate=plate)
        self.args, self.kwargs, self.vectorize = args, kwargs, vectorize
        first = {name: value[0] for name, value in draws.items()}
        condition = _ConditionLatents(first, check_shapes=True)
        with torch.no_grad(), poutine.block():  # with the user's validation: clear errors
            trace = poutine.trace(condition(self.model)).get_trace(*args, **kwargs)
        if condition.observed:
            raise ValueError(
                f"samples hold draws of observed site(s) {sorted(condition.observed)} of the "
                "model; pass draws of its latent sites only"
            )
        missing = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        ]
        if missing:
            raise ValueError(
                f"samples have no draws of the model's latent site(s) {missing} (got "
                f"{sorted(draws)}): log p(D_e|θ) needs every latent site"
            )
        subsampled = subsampled_plates(trace)
        if subsampled:
            raise ValueError(
                f"plate(s) {subsampled} subsample: reweighting needs log p(D_e|θ_s) exactly; "
                "pass the data without subsampling"
            )
        self.sites: list[_Site] = []
        start = 0
        for name in sorted(condition.conditioned, key=list(trace.nodes).index):
            site = trace.nodes[name]
            shape = site["value"].shape
            support = site["fn"].support
            transform = biject_to(support) if not support.is_discrete else None
            ushape = shape if transform is None else transform.inv(site["value"]).shape
            stop = start + ushape.numel()
            self.sites.append(
                _Site(name, shape, site["fn"].event_dim, transform, ushape, start, stop)
            )
            start = stop
        self.dim = start
        self.latents = [s.name for s in self.sites]
        self.nesting = max(
            [max_plate_nesting(trace)]
            + [
                len(s["fn"].batch_shape)
                for s in trace.nodes.values()
                if s["type"] == "sample" and not site_is_subsample(s)
            ]
        )
        if self.latents:
            self._check_erased(trace)

    def _check_erased(self, trace) -> None:
        trace.compute_log_prob(site_filter=lambda _, site: site["infer"].get(ERASED) is not None)
        erased_log_likelihood(trace)  # raises when nothing is flagged

    # -- evaluation ------------------------------------------------------------------------------
    def _trace(self, model, values, args, kwargs):
        conditioned = _ConditionLatents(values)(model)
        with poutine.block():  # nothing reaches the user's handlers (e.g. an enclosing SVI)
            return poutine.trace(conditioned).get_trace(*args, **kwargs)

    def _plated(self, model, values: dict[str, torch.Tensor], num: int):
        """Draws reshaped to (num, 1, ..., site shape) and the model in a plate of size num."""
        dim = -self.nesting - 1
        shaped = {}
        for site in self.sites:
            value = values[site.name]
            pad = self.nesting - (len(site.shape) - site.event_dim)
            shaped[site.name] = value.reshape((num,) + (1,) * pad + site.shape)
        return pyro.plate("_mcmc_unlearn_draws", num, dim=dim)(model), shaped, dim

    def erased_log_likelihood(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(D_e|θ_s) for a chunk of draws (n, ...) → (n,)."""
        num = values[self.latents[0]].shape[0]

        def filt(_, site):
            return site["infer"].get(ERASED) is not None

        if self.vectorize == "vmap":

            def one(vals):
                trace = self._trace(self.model, vals, self.args, self.kwargs)
                trace.compute_log_prob(site_filter=filt)
                return erased_log_likelihood(trace)[0]

            return _vmapped(one, values)
        model, shaped, dim = self._plated(self.model, values, num)
        trace = self._trace(model, shaped, self.args, self.kwargs)
        trace.compute_log_prob(site_filter=filt)
        return erased_log_likelihood(trace, dim, num)

    def constrain(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Unconstrained (n, P) → constrained draws {site: (n, ...)} and Σ log|det J| (n,)."""
        lead = u.shape[:-1]
        values, log_det = {}, u.new_zeros(lead)
        for s in self.sites:
            part = u[..., s.start : s.stop].reshape(lead + s.ushape)
            value = s.transform(part)
            ladj = s.transform.log_abs_det_jacobian(part, value)
            log_det = log_det + ladj.reshape(lead + (-1,)).sum(-1)
            values[s.name] = value
        return values, log_det

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [
            s.transform.inv(values[s.name]).reshape(len(values[s.name]), -1) for s in self.sites
        ]
        return torch.cat(parts, dim=-1)

    def log_target_and_grad(
        self, u: torch.Tensor, target: Callable, args, kwargs, drop_erased: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(θ, D_r) + log|det J| at unconstrained u (n, P) and its gradient."""

        def total(trace, dim, num):
            trace.compute_log_prob()
            out = None
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                lp = site["log_prob"]
                flag = site["infer"].get(ERASED) if drop_erased else None
                if flag is True:
                    continue
                if flag is not None:
                    lp = torch.where(flag, lp.new_zeros(()), lp)
                term = sum_per_particle(lp, dim, num)
                out = term if out is None else out + term
            return out

        if self.vectorize == "vmap":

            def one(v):
                values, log_det = self.constrain(v)
                trace = self._trace(target, values, args, kwargs)
                return total(trace, None, 1)[0] + log_det

            grad, value = _vmapped(grad_and_value(one), u)
            return value.detach(), grad.detach()
        num = u.shape[0]
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            values, log_det = self.constrain(u)
            model, shaped, dim = self._plated(target, values, num)
            value = total(self._trace(model, shaped, args, kwargs), dim, num) + log_det
            (grad,) = torch.autograd.grad(value.sum(), u)
        return value.detach(), grad.detach()


def _vmapped(fn: Callable, values: Any):
    """``vmap(fn)(values)`` with Pyro's validation off (argument checks are data-dependent
    control flow, which vmap refuses) and a clear error for what vmap cannot batch."""
    try:
        with pyro.validation_enabled(False):
            return vmap(fn, randomness="error")(values)
    except RuntimeError as e:
        if "random" in str(e):
            raise ValueError(
                "the model draws random numbers at fixed θ: every latent site needs draws, and "
                "no plate may subsample"
            ) from e
        raise RuntimeError(
            f"torch.func.vmap could not batch the model over draws ({e}); pass "
            "vectorize='plate' if the model broadcasts over a leading particle dim"
        ) from e


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


# -- resampling -----------------------------------------------------------------------------------
def _resample(
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


# -- rejuvenation: batched HMC on D_r -------------------------------------------------------------
def _whitening(u: torch.Tensor, weights: torch.Tensor, ess: float, mass: str) -> tuple:
    """(mean, L) with L Lᵀ the weighted covariance of the unconstrained draws (an estimate of
    p(θ|D_r)'s), shrunk towards the unweighted one when the ESS is small relative to P."""
    finite = torch.isfinite(u).all(-1)
    u, weights = u[finite], weights[finite] / weights[finite].sum()
    P = u.shape[-1]
    mean_w = (weights[:, None] * u).sum(0)
    centred = u - mean_w
    centred0 = u - u.mean(0)
    if mass == "diagonal":
        cov_w = (weights[:, None] * centred**2).sum(0)
        cov_0 = (centred0**2).mean(0)
    else:
        cov_w = (weights[:, None] * centred).T @ centred
        cov_0 = centred0.T @ centred0 / len(u)
    alpha = P / (P + ess)
    cov = (1 - alpha) * cov_w + alpha * cov_0
    diag = cov if mass == "diagonal" else cov.diagonal()
    scale = float(diag.mean()) if float(diag.mean()) > 0 else 1.0
    jitter = 1e-6 * scale
    if mass == "diagonal":
        return mean_w, (cov + jitter).sqrt()
    eye = torch.eye(P, dtype=u.dtype, device=u.device)
    return mean_w, torch.linalg.cholesky(0.5 * (cov + cov.T) + jitter * eye)


def _hmc(
    log_target: Callable,
    u: torch.Tensor,
    mean: torch.Tensor,
    chol: torch.Tensor,
    config: _Rejuvenation,
    generator: torch.Generator | None,
    progress: bool,
) -> tuple[torch.Tensor, float, float]:
    """``num_moves`` HMC moves for every particle at once, in the whitened coordinates
    z = L⁻¹(u − m) (unit mass), each with its own momentum and Metropolis test. The step size is
    jittered per particle (±20 %) and adapted between moves to the population's acceptance rate;
    every move leaves p(θ|D_r) invariant."""
    diagonal = chol.dim() == 1
    n, P = u.shape
    kw = {"dtype": u.dtype, "device": u.device, "generator": generator}

    def to_u(z):
        return mean + (z * chol if diagonal else z @ chol.T)

    def value_and_grad_z(z):
        lp, g = log_target(to_u(z))
        return lp, (g * chol if diagonal else g @ chol)

    z = (
        (u - mean) / chol
        if diagonal
        else torch.linalg.solve_triangular(chol, (u - mean).T, upper=False).T
    )
    lp, grad = value_and_grad_z(z)
    step = config.step_size if config.step_size is not None else 0.8 * P**-0.25
    rates = []
    for _ in tqdm(range(config.num_moves), desc="rejuvenating", disable=not progress, leave=False):
        eps = step * (0.8 + 0.4 * torch.rand(n, 1, **kw))
        leapfrogs = min(config.max_leapfrog, max(1, math.ceil(config.trajectory_length / step)))
        r = torch.randn(n, P, **kw)
        energy = -lp + 0.5 * (r**2).sum(-1)
        z_new, lp_new, grad_new = z, lp, grad
        r_new = r + 0.5 * eps * grad_new
        for i in range(leapfrogs):
            z_new = z_new + eps * r_new
            lp_new, grad_new = value_and_grad_z(z_new)
            r_new = r_new + (eps if i < leapfrogs - 1 else 0.5 * eps) * grad_new
        log_accept = energy - (-lp_new + 0.5 * (r_new**2).sum(-1))
        log_accept = torch.nan_to_num(log_accept, nan=-math.inf).clamp(max=0.0)
        accept = torch.rand(n, **kw).log() < log_accept
        z = torch.where(accept[:, None], z_new, z)
        lp = torch.where(accept, lp_new, lp)
        grad = torch.where(accept[:, None], grad_new, grad)
        rate = float(log_accept.exp().mean())
        rates.append(rate)
        step *= math.exp(2.0 * (rate - config.target_accept))
    return to_u(z), sum(rates) / max(1, len(rates)), step


def _rejuvenation(rejuvenate: Any, erased: Any) -> _Rejuvenation | None:
    if rejuvenate is None or rejuvenate is False:
        return None
    if rejuvenate is True:
        rejuvenate = {}
    if not isinstance(rejuvenate, Mapping):
        raise TypeError(f"rejuvenate must be None, True or a dict, got {type(rejuvenate).__name__}")
    unknown = sorted(set(rejuvenate) - set(_REJUVENATE_KEYS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in _REJUVENATE_KEYS.items())
        raise ValueError(f"unknown rejuvenate key(s) {unknown}; known keys: {known}")
    config = _Rejuvenation(**rejuvenate)
    if int(config.num_moves) < 1:
        raise ValueError(
            f"rejuvenate['num_moves'] must be a positive integer, got {config.num_moves}"
        )
    if config.args is None and config.kwargs is None and erased is None:
        raise ValueError(
            "rejuvenation targets p(θ|D_r), but with erased=None the model's arguments are D_e "
            "alone: pass D_r as rejuvenate={'args': (...), 'kwargs': {...}}"
        )
    if not 0.0 < float(config.target_accept) < 1.0:
        raise ValueError(
            f"rejuvenate['target_accept'] must be in (0, 1), got {config.target_accept}"
        )
    if config.mass_matrix not in (None, "dense", "diagonal"):
        raise ValueError(
            f"rejuvenate['mass_matrix'] must be 'dense' or 'diagonal', got {config.mass_matrix!r}"
        )
    for key in ("step_size", "trajectory_length"):
        value = getattr(config, key)
        if value is not None and not (float(value) > 0 and math.isfinite(float(value))):
            raise ValueError(f"rejuvenate[{key!r}] must be a positive number, got {value}")
    if int(config.max_leapfrog) < 1:
        raise ValueError(f"rejuvenate['max_leapfrog'] must be positive, got {config.max_leapfrog}")
    return config


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
    **kwargs: Any,
) -> MCMCUnlearnResult:
    r"""Unlearn D_e from MCMC draws θ_s ~ p(θ|D) by importance reweighting (exact as S → ∞):

    .. math:: p(θ|D_r) ∝ \frac{p(θ|D)}{p(D_e|θ)}, \qquad
              \log w_s = −ℓ_s − \mathrm{logsumexp}_{s'}(−ℓ_{s'}), \quad ℓ_s = \log p(D_e|θ_s),
              \qquad \mathrm{ESS} = 1 / \textstyle\sum_s w_s^2

    ``samples`` is a ``pyro.infer.MCMC`` that has run (``get_samples(group_by_chain=False)``),
    an ``arviz.InferenceData`` (its posterior group, chains flattened chain by chain) or a dict
    site → tensor (S, ...) of constrained draws; it is never modified. ℓ_s is read by running
    ``unlearn(model, erased=erased, plate=plate)`` (``*args, **kwargs`` are the model's: the
    erased data alone with ``erased=None``, or the full data with the erased rows of ``plate``)
    with the latent sites conditioned on the draws, for ``chunk_size`` draws at a time:
    ``vectorize="vmap"`` batches any model with ``torch.func.vmap``; ``"plate"`` wraps the model
    in a plate left of its own (it must broadcast, as for ``vectorize_particles``). Variables of
    ``samples`` that are no latent site of the model (e.g. deterministic ones) are carried along.

    If ESS/S < ``ess_threshold`` a :class:`LowESSWarning` says that D_e is too informative to
    reweight p(θ|D): the estimates carry a large Monte-Carlo error. ``resample`` ("systematic",
    "multinomial" or ``None``) draws ``num_samples`` (default S) equally weighted particles with
    ``seed``/``generator`` on the draws' device.

    ``rejuvenate`` (``True`` or a dict, keys ``num_moves``, ``args``, ``kwargs``, ``step_size``,
    ``trajectory_length``, ``max_leapfrog``, ``target_accept``, ``mass_matrix``) moves every
    resampled particle by ``num_moves`` HMC steps targeting p(θ|D_r) ∝ p(θ) p(D_r|θ), in the
    unconstrained space and with all particles batched (Pyro's MCMC runs one chain at a time, so
    its kernels are not used): the target is the model on ``rejuvenate["args"]``/``["kwargs"]``
    (D_r), or, when they are not given and ``erased`` names rows of a plate, the model on
    ``*args`` without the erased rows. The mass matrix is the importance-weighted covariance of
    the draws (the estimate of p(θ|D_r)'s); the step size adapts between moves. Rejuvenation
    needs continuous latents and drops carried non-latent variables.

    Sequential requests: keep the original draws and unlearn the union of all erased data from
    them, rather than reweighting an already unlearned result (DESIGN.md §1).

    Example (y_n ~ N(θ, 1), θ ~ N(0, 1); forgetting y₃ = 2 leaves p(θ|D_r) = N(1/3, 1/3))::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(theta, 1.0), obs=y)
        >>> y = torch.tensor([0.0, 1.0, 2.0])
        >>> pyro.set_rng_seed(0)
        >>> draws = {"theta": dist.Normal(0.75, 0.5).sample((20000,))}  # exact p(θ|D)
        >>> result = mcmc_unlearn(model, draws, y, erased=[2], plate="data", seed=0)
        >>> round(result.ess_fraction, 1)  # 1 / E[w²] = 1/3 as S → ∞
        0.3
        >>> mean = result.samples["theta"].mean()
        >>> bool(abs(mean - 1 / 3) < 0.02), bool(abs(result.samples["theta"].var() - 1 / 3) < 0.02)
        (True, True)
    """
    start = time.perf_counter()
    if resample not in (None, *RESAMPLING):
        raise ValueError(f"resample must be one of {RESAMPLING} or None, got {resample!r}")
    if vectorize not in VECTORIZE:
        raise ValueError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold is a fraction of the draws in [0, 1], got {ess_threshold}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    config = _rejuvenation(rejuvenate, erased)
    if config is not None and resample is None:
        raise ValueError("rejuvenation moves resampled particles: pass resample='systematic'")

    draws = _flatten_samples(samples)
    S = next(iter(draws.values())).shape[0]
    if num_samples is not None and int(num_samples) < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    num = S if num_samples is None else int(num_samples)
    device = next(iter(draws.values())).device
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"the generator is on {generator.device}, the draws on {device}")

    m = _Model(model, draws, args, kwargs, erased, plate, vectorize)
    if not m.latents:
        raise ValueError(f"samples {sorted(draws)} name no latent site of the model")
    with torch.no_grad():
        log_lik = torch.cat(
            [
                m.erased_log_likelihood({k: draws[k][part] for k in m.latents})
                for part in tqdm(
                    list(_chunks(S, int(chunk_size))),
                    desc="log p(D_e|θ)",
                    disable=not progress,
                    leave=False,
                )
            ]
        )
    bad = ~torch.isfinite(log_lik)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"log p(D_e|θ_s) is not finite for {int(bad.sum())} of {S} draws (first: draw "
            f"{first}, value {float(log_lik[first])}): such a θ_s cannot be a draw of p(θ|D), "
            "or the draws are corrupt (NaN)"
        )
    log_weights = torch.log_softmax(-log_lik, dim=0)
    weights = log_weights.exp()
    ess = float(effective_sample_size(weights))
    fraction = ess / S
    if fraction < float(ess_threshold):
        warnings.warn(
            f"MCMC unlearning: the effective sample size {ess:.1f} of {S} draws "
            f"(ESS/S = {fraction:.3g}) is below the threshold ess_threshold = {ess_threshold}: "
            "D_e is too informative to reweight p(θ|D) reliably and the unlearned estimates "
            "carry a large Monte-Carlo error. Draw more samples, rejuvenate on D_r, or rerun "
            "MCMC on D_r",
            LowESSWarning,
            stacklevel=2,
        )
    if resample is None:
        return MCMCUnlearnResult(
            samples={k: v.clone() for k, v in draws.items()},
            log_weights=log_weights,
            weights=weights,
            log_likelihood=log_lik,
            ess=ess,
            ess_fraction=fraction,
            indices=None,
            num_unique=S,
            resampling=None,
            seconds=time.perf_counter() - start,
        )
    indices = _resample(weights, num, resample, generator)
    out = {k: v.index_select(0, indices) for k, v in draws.items()}
    result = MCMCUnlearnResult(
        samples=out,
        log_weights=log_weights,
        weights=weights,
        log_likelihood=log_lik,
        ess=ess,
        ess_fraction=fraction,
        indices=indices,
        num_unique=int(indices.unique().numel()),
        resampling=resample,
    )
    if config is not None:
        _rejuvenate(m, draws, result, config, args, kwargs, erased, chunk_size, generator, progress)
    result.seconds = time.perf_counter() - start
    return result


def _rejuvenate(m, draws, result, config, args, kwargs, erased, chunk_size, generator, progress):
    discrete = [s.name for s in m.sites if s.transform is None]
    if discrete:
        raise ValueError(f"rejuvenation (HMC) needs continuous latents; {discrete} are discrete")
    if not all(draws[s.name].is_floating_point() for s in m.sites):
        raise ValueError("rejuvenation (HMC) needs floating-point draws of every latent site")
    if config.args is None and config.kwargs is None:
        target, t_args, t_kwargs, drop = m.model, args, kwargs, True
    else:
        target, drop = m.raw, False  # the model on D_r: every observation counts
        t_args, t_kwargs = tuple(config.args or ()), dict(config.kwargs or {})
    mass = config.mass_matrix or ("dense" if m.dim <= 200 else "diagonal")
    with torch.no_grad():
        u_all = m.unconstrain({k: draws[k] for k in m.latents})
        mean, chol = _whitening(u_all, result.weights, result.ess, mass)
        u = u_all.index_select(0, result.indices)
        if not bool(torch.isfinite(u).all()):
            raise ValueError(
                "a resampled draw lies on the boundary of its site's support (infinite in the "
                "unconstrained space): it cannot be moved by HMC"
            )

    def log_target(v):
        parts = [
            m.log_target_and_grad(v[c], target, t_args, t_kwargs, drop)
            for c in _chunks(len(v), int(chunk_size))
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    u, rate, step = _hmc(log_target, u, mean, chol, config, generator, progress)
    with torch.no_grad():
        values, _ = m.constrain(u)
    result.samples = {k: v.reshape(len(u), *draws[k].shape[1:]) for k, v in values.items()}
    result.rejuvenated, result.num_moves = True, int(config.num_moves)
    result.acceptance_rate, result.step_size = rate, step
