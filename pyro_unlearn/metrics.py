"""Comparing posteriors: the evaluation toolkit of the unlearning experiments.

- over θ: :func:`param_kl` (closed form :func:`gaussian_kl` on
  :func:`~pyro_unlearn.guides.read_gaussian` for Gaussian guides, Monte Carlo otherwise), in
  the guides' unconstrained (auxiliary) space;
- over y: the Monte-Carlo posterior predictive :func:`predictive_distribution`
  p(y|x) = (1/S) Σ_s p(y|x, θ_s), θ_s ~ q(θ), and :func:`predictive_kl`, the papers' metric
  KL[q_retrained(y|x) ‖ q_unlearned(y|x)] per data point; :func:`accuracy`,
  :func:`log_predictive_density` and :func:`mean_and_std`;
- :func:`to_inference_data`: ArviZ ``InferenceData`` of several posteriors, for ``az.summary``
  and ``az.plot_forest``;
- membership inference: :func:`per_example_loss` (−log of the Monte-Carlo predictive of each
  example), :func:`membership_attack` (loss-threshold and logistic-regression attacks on two
  groups of losses, cross-validated; works on any network's losses) and
  :func:`membership_inference` (both, for several posteriors of one model).

A posterior is anything usable as a Pyro guide: a live AutoGuide, a guide function or a
:class:`~pyro_unlearn.posterior.FrozenPosterior`. Two *live* AutoGuides of the same class share
their parameters' names in the param store (they are the same distribution): compare different
posteriors as frozen ones (:func:`pyro_unlearn.freeze`). Every metric runs without gradients,
with θ-samples vectorised by a plate outside the model's plates, on the tensors' device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

from .guides.gaussian import GAUSSIAN_GUIDES, read_gaussian
from .posterior import FrozenPosterior
from .traces import latent_sites, max_plate_nesting, sum_sites_per_particle

if TYPE_CHECKING:
    import arviz

__all__ = [
    "MembershipAttack",
    "accuracy",
    "gaussian_kl",
    "log_predictive_density",
    "mean_and_std",
    "membership_attack",
    "membership_inference",
    "param_kl",
    "per_example_loss",
    "predictive_distribution",
    "predictive_kl",
    "to_inference_data",
]

_SUPPORTED = "Bernoulli, Categorical, Normal"
_WRAPPERS = (torch.distributions.Independent, MaskedDistribution, ExpandedDistribution)
# Elements of one (y-draws × points × θ-samples) block in the Monte-Carlo predictive KL.
_MC_BLOCK = 2**24


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


# -- vectorised θ-samples ------------------------------------------------------------------------
def _vectorized_traces(
    model: Callable[..., Any] | None,
    posterior: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    num_samples: int,
    name: str,
) -> tuple[Trace, Trace | None, Trace | None, int]:
    """θ_s ~ posterior, s = 1..S, in one plate of size S left of every plate of the model and the
    guide, and (if ``model`` is given) the model replayed on them.

    Returns ``(guide_trace, model_trace, unvectorised_model_trace, dim)`` with ``dim`` the sample
    plate's (negative) batch dim. Everything runs under ``poutine.block()`` (nothing reaches an
    enclosing SVI) and ``torch.no_grad()``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    with torch.no_grad(), poutine.block():
        guide_once = poutine.trace(posterior).get_trace(*args, **kwargs)
        model_once = None if model is None else poutine.trace(model).get_trace(*args, **kwargs)
        nesting = max_plate_nesting(guide_once)
        if model_once is not None:
            nesting = max(nesting, max_plate_nesting(model_once))
        dim = -nesting - 1
        guide_trace = poutine.trace(pyro.plate(name, num_samples, dim=dim)(posterior)).get_trace(
            *args, **kwargs
        )
        model_trace = None
        if model is not None:
            vectorized = pyro.plate(name, num_samples, dim=dim)(model)
            model_trace = poutine.trace(poutine.replay(vectorized, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
    return guide_trace, model_trace, model_once, dim


class _PredictiveSite:
    """The observed site's distribution p(y|x, θ_s) for all s at once, unwrapped.

    ``base`` is the innermost distribution (``Independent``, masks and ``expand`` wrappers
    removed); ``shape`` the full shape of one θ-sample's y including the sample dim at
    ``sample_dim`` (a non-negative index), so that ``points`` is ``shape`` without it: every
    scalar observation (reinterpreted event dims become points, each with its marginal
    predictive). ``value`` is the observed value, or ``None`` when the site was not observed.
    """

    def __init__(self, model, posterior, args, kwargs, site: str, num_samples: int) -> None:
        guide_trace, trace, _, dim = _vectorized_traces(
            model, posterior, args, kwargs, num_samples, "_predictive_samples"
        )
        if site not in trace.nodes or trace.nodes[site]["type"] != "sample":
            names = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
            raise ValueError(f"the model has no sample site {site!r}; its sample sites: {names}")
        if site in guide_trace.nodes and not site_is_subsample(guide_trace.nodes[site]):
            raise ValueError(f"{site!r} is a latent site of the posterior, not an observed site")
        node = trace.nodes[site]
        fn = node["fn"]
        self.shape = fn.batch_shape + fn.event_shape
        self.sample_dim = len(fn.batch_shape) + dim
        self.num_samples = num_samples
        self.points = self.shape[: self.sample_dim] + self.shape[self.sample_dim + 1 :]
        base = fn
        while isinstance(base, _WRAPPERS):
            base = base.base_dist
        self.base = base
        self.value = node["value"] if node["is_observed"] else None
        self.site = site
        self.fn = fn  # the wrapped per-θ distribution: per-example (joint over event dims)
        self.event_dims = len(fn.event_shape)

    def _full(self, param: torch.Tensor, extra: tuple[int, ...] = ()) -> torch.Tensor:
        return param.expand(self.shape + extra)

    def check_supported(self) -> None:
        if not isinstance(
            self.base,
            (
                torch.distributions.Bernoulli,
                torch.distributions.Categorical,
                torch.distributions.Normal,
            ),
        ):
            raise TypeError(
                f"site {self.site!r} has a {type(self.base).__name__} distribution; the predictive "
                f"is implemented for {_SUPPORTED}"
            )

    def predictive(self) -> torch.distributions.Distribution:
        self.check_supported()
        base, s = self.base, self.sample_dim
        if isinstance(base, torch.distributions.Bernoulli):
            return dist.Bernoulli(probs=self._full(base.probs).mean(s))
        if isinstance(base, torch.distributions.Categorical):
            probs = self._full(base.probs, base.probs.shape[-1:]).mean(s)
            return dist.Categorical(probs=probs)
        loc = self._full(base.loc).movedim(s, -1)
        scale = self._full(base.scale).movedim(s, -1)
        mixing = dist.Categorical(logits=loc.new_zeros(self.num_samples))
        return dist.MixtureSameFamily(mixing, dist.Normal(loc, scale))

    def observed(self, what: str) -> torch.Tensor:
        if self.value is None:
            raise ValueError(
                f"{what} needs the observed values of site {self.site!r}: call it with the "
                "model's observations (the site was sampled, not observed)"
            )
        return self.value.expand(self.points)


def predictive_distribution(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.distributions.Distribution:
    r"""The Monte-Carlo posterior predictive at every data point of the observed site ``site``:

    .. math:: p(y|x) = \frac1S \sum_{s=1}^S p(y|x, θ_s), \qquad θ_s \sim q(θ)

    with S = ``num_samples``.

    ``posterior`` is a guide (live AutoGuide, guide function or FrozenPosterior), called with
    the model's ``*args, **kwargs``; the site's observed value may be given or ``None``. The
    θ-samples are drawn in one plate (``"_predictive_samples"``) left of the model's plates,
    without gradients; the model is replayed on them. Returns, with batch shape the site's
    shape (every scalar observation; event dims of an ``Independent`` become points, each with
    its marginal predictive):

    - Bernoulli sites: ``Bernoulli(probs = mean_s probs_s)``;
    - Categorical sites: ``Categorical(probs = mean_s probs_s)``;
    - Normal sites: the uniform ``MixtureSameFamily`` of the S Normals.

    Other site distributions raise ``TypeError``.

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def guide(x, y=None):  # θ is a point mass at w = 2
        ...     pyro.sample("w", dist.Delta(torch.tensor(2.0)))
        >>> x = torch.tensor([0.0, 1.0])
        >>> predictive_distribution(model, guide, x, site="y", num_samples=10).probs
        tensor([0.5000, 0.8808])
    """
    return _PredictiveSite(model, posterior, args, kwargs, site, num_samples).predictive()


def _clamped_log(p: torch.Tensor) -> torch.Tensor:
    return p.clamp_min(torch.finfo(p.dtype).eps).log()


def _mixture_kl(
    p: torch.distributions.MixtureSameFamily,
    q: torch.distributions.MixtureSameFamily,
    num_y_samples: int,
) -> torch.Tensor:
    """KL[p ‖ q] per point ≈ mean_j [log p(y_j) − log q(y_j)], y_j ~ p, in blocks of y-draws."""
    comp = p.component_distribution
    shape = p.batch_shape + comp.batch_shape[-1:]
    loc, scale = comp.loc.expand(shape), comp.scale.expand(shape)
    index = p.mixture_distribution.sample((num_y_samples, *p.batch_shape)).unsqueeze(-1)
    full = (num_y_samples, *shape)
    mean = loc.expand(full).gather(-1, index).squeeze(-1)
    std = scale.expand(full).gather(-1, index).squeeze(-1)
    y = torch.normal(mean, std)
    width = max(shape[-1], q.component_distribution.batch_shape[-1])
    block = max(1, _MC_BLOCK // max(1, p.batch_shape.numel() * width))
    total = y.new_zeros(p.batch_shape)
    for start in range(0, num_y_samples, block):  # blocks of y-draws bound the memory only
        chunk = y[start : start + block]
        total = total + (p.log_prob(chunk) - q.log_prob(chunk)).sum(0)
    return total / num_y_samples


def predictive_kl(
    model: Callable[..., Any],
    p: Callable[..., Any],
    q: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    num_y_samples: int = 1000,
    **kwargs: Any,
) -> torch.Tensor:
    r"""KL[p(y|x) ‖ q(y|x)] between the Monte-Carlo predictives (:func:`predictive_distribution`,
    ``num_samples`` θ-samples each) of two posteriors, at every data point of ``site``.

    Bernoulli, with π = p(y=1|x), ρ = q(y=1|x): π log(π/ρ) + (1−π) log((1−π)/(1−ρ));
    Categorical: Σ_k π_k log(π_k/ρ_k) (both exact given the two predictives; probabilities are
    clamped at the dtype's eps inside the logs). Normal sites (mixtures): Monte Carlo,
    mean_j [log p(y_j|x) − log q(y_j|x)] over ``num_y_samples`` draws y_j ~ p(y|x).

    The papers' metric is ``predictive_kl(model, retrained, unlearned, x, site=...)`` averaged
    (:func:`mean_and_std`) over the points of D_e and of D_r separately; the "full" baseline
    replaces ``unlearned`` by q(θ|D). Returns a tensor of the site's (points') shape.

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def p(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(0.0)))  # p(y=1|x) = 1/2
        >>> def q(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(3.0).log()))  # q(y=1|x=1) = 3/4
        >>> predictive_kl(model, p, q, torch.tensor([0.0, 1.0]), site="y", num_samples=1)
        tensor([0.0000, 0.1438])
    """
    pd = predictive_distribution(model, p, *args, site=site, num_samples=num_samples, **kwargs)
    qd = predictive_distribution(model, q, *args, site=site, num_samples=num_samples, **kwargs)
    if isinstance(pd, torch.distributions.Bernoulli):
        pi, rho = pd.probs, qd.probs
        return pi * (_clamped_log(pi) - _clamped_log(rho)) + (1 - pi) * (
            _clamped_log(1 - pi) - _clamped_log(1 - rho)
        )
    if isinstance(pd, torch.distributions.Categorical):
        pi, rho = pd.probs, qd.probs
        return (pi * (_clamped_log(pi) - _clamped_log(rho))).sum(-1)
    if num_y_samples < 1:
        raise ValueError(f"num_y_samples must be at least 1, got {num_y_samples}")
    with torch.no_grad():
        return _mixture_kl(pd, qd, num_y_samples)


def mean_and_std(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation (``correction=1``; 0.0 for a single value) over all points.

    Example::

        >>> mean_and_std(torch.tensor([1.0, 2.0, 3.0]))
        (2.0, 1.0)
        >>> mean_and_std(torch.tensor([4.0]))
        (4.0, 0.0)
    """
    values = torch.as_tensor(values).detach().reshape(-1)
    if values.numel() == 0:
        raise ValueError("mean_and_std needs at least one value")
    std = float(values.std(correction=1)) if values.numel() > 1 else 0.0
    return float(values.mean()), std


def accuracy(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    **kwargs: Any,
) -> float:
    """Fraction of the points whose predictive mode (:func:`predictive_distribution`;
    Bernoulli: p(y=1|x) > ½, Categorical: argmax_k p(y=k|x)) equals the observed value of
    ``site``. The model must be called with its observations (``ValueError`` otherwise).

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def guide(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(1.0)))
        >>> x, y = torch.tensor([-1.0, 1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])
        >>> accuracy(model, guide, x, y, site="y")
        0.75
    """
    found = _PredictiveSite(model, posterior, args, kwargs, site, num_samples)
    found.check_supported()
    if isinstance(found.base, torch.distributions.Normal):
        raise TypeError(
            f"accuracy needs a Bernoulli or Categorical site; {site!r} is a Normal "
            "(use log_predictive_density or predictive_kl)"
        )
    observed = found.observed("accuracy")
    probs = found.predictive().probs
    if isinstance(found.base, torch.distributions.Bernoulli):
        predicted = (probs > 0.5).to(observed.dtype)
    else:
        predicted = probs.argmax(-1).to(observed.dtype)
    return float((predicted == observed).double().mean())


def log_predictive_density(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str,
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.Tensor:
    r"""log p(y_obs|x) under the Monte-Carlo predictive, at every data point of ``site``:

    .. math:: \log \frac1S \sum_s p(y_\text{obs}|x, θ_s) = \mathrm{logsumexp}_s \log
              p(y_\text{obs}|x, θ_s) − \log S

    Any site distribution with a ``log_prob`` works (event dims of an ``Independent`` become
    points, as in :func:`predictive_distribution`). The model must be called with its
    observations (``ValueError`` otherwise).

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         return pyro.sample("y", dist.Bernoulli(logits=w * x), obs=y)
        >>> def guide(x, y=None):
        ...     pyro.sample("w", dist.Delta(torch.tensor(1.0)))
        >>> x, y = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
        >>> log_predictive_density(model, guide, x, y, site="y").exp()  # 1/2, 1 − σ(1)
        tensor([0.5000, 0.2689])
    """
    found = _PredictiveSite(model, posterior, args, kwargs, site, num_samples)
    base = found.base
    observed = found.observed("log_predictive_density")
    # The site's value lives in the points' shape; the sample dim is inserted (size 1) so that
    # it broadcasts against the per-θ distributions, whose batch shape carries all S samples.
    value = observed.unsqueeze(found.sample_dim)
    with torch.no_grad():
        log_p = base.log_prob(value)
    batch = found.shape[: len(found.shape) - len(base.event_shape)]
    log_p = log_p.expand(batch)
    return torch.logsumexp(log_p, dim=found.sample_dim) - math.log(found.num_samples)


# -- parameter-space KL -------------------------------------------------------------------------
def _unwrap(posterior: Callable[..., Any]) -> Callable[..., Any]:
    return posterior.guide if isinstance(posterior, FrozenPosterior) else posterior


def _auxiliary_sites(
    posterior: Callable[..., Any], args: tuple, kwargs: dict
) -> dict[str, tuple[int, ...]]:
    """The sites a posterior is scored on (see :func:`~pyro_unlearn.traces.latent_sites`) and
    the shapes of their values."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(posterior).get_trace(*args, **kwargs)
    return {name: tuple(trace.nodes[name]["value"].shape) for name in latent_sites(trace)}


def _name(posterior: Callable[..., Any]) -> str:
    guide = _unwrap(posterior)
    kind = type(guide).__name__ if isinstance(guide, torch.nn.Module) else guide.__name__
    return f"frozen {kind}" if isinstance(posterior, FrozenPosterior) else kind


def param_kl(
    p: Callable[..., Any],
    q: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    method: str = "auto",
    **kwargs: Any,
) -> torch.Tensor:
    r"""KL(p ‖ q) between two posteriors over θ in the guides' unconstrained (auxiliary) space.

    ``method="closed_form"``: :func:`gaussian_kl` on :func:`~pyro_unlearn.guides.read_gaussian`,
    for Gaussian AutoGuides (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal,
    AutoLowRankMultivariateNormal; live or frozen). ``method="monte_carlo"``:

    .. math:: \mathrm{KL}(p‖q) ≈ \frac1S \sum_s [\log p(θ_s) − \log q(θ_s)],\qquad θ_s \sim p

    with S = ``num_samples`` draws in one plate, summing only the auxiliary sites, q scored by
    replaying it on p's trace. ``"auto"`` takes the closed form when both are Gaussian.
    ``*args, **kwargs`` are the guides' arguments (needed for tracing). Both posteriors must
    have the same auxiliary sites (``ValueError`` otherwise); compare two posteriors of one
    guide class as frozen ones (:func:`pyro_unlearn.freeze`).

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal, init_to_value
        >>> from pyro_unlearn import freeze
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> def posterior(loc, scale):
        ...     init = init_to_value(values={"mu": torch.tensor(loc)})
        ...     return freeze(AutoNormal(model, init_loc_fn=init, init_scale=scale))
        >>> kl = param_kl(posterior(0.0, 1.0), posterior(1.0, 2.0))  # log 2 + 2/8 − 1/2
        >>> round(float(kl), 4)
        0.4431
    """
    if method not in ("auto", "closed_form", "monte_carlo"):
        raise ValueError(f"method must be 'auto', 'closed_form' or 'monte_carlo', got {method!r}")
    sites_p, sites_q = _auxiliary_sites(p, args, kwargs), _auxiliary_sites(q, args, kwargs)
    if sites_p != sites_q:
        raise ValueError(
            f"the two posteriors have different auxiliary sites ({_name(p)}: {sites_p}, "
            f"{_name(q)}: {sites_q}, as name: shape); param_kl compares posteriors of the same "
            "guide structure"
        )
    gaussian = all(isinstance(_unwrap(g), GAUSSIAN_GUIDES) for g in (p, q))
    if method == "closed_form" and not gaussian:
        raise TypeError(
            f"the closed form needs two Gaussian AutoGuides (live or frozen), got {_name(p)} and "
            f"{_name(q)}; use method='monte_carlo'"
        )
    if method != "monte_carlo" and gaussian:
        loc_p, cov_p = read_gaussian(p)
        loc_q, cov_q = read_gaussian(q)
        if loc_p.shape != loc_q.shape:
            raise ValueError(
                f"the two posteriors' latent spaces differ: dimensions {tuple(loc_p.shape)} and "
                f"{tuple(loc_q.shape)}"
            )
        return gaussian_kl(loc_p, cov_p, loc_q, cov_q)
    trace_p, _, _, dim = _vectorized_traces(None, p, args, kwargs, num_samples, "_param_kl_samples")
    with torch.no_grad(), poutine.block():
        vectorized_q = pyro.plate("_param_kl_samples", num_samples, dim=dim)(q)
        trace_q = poutine.trace(poutine.replay(vectorized_q, trace=trace_p)).get_trace(
            *args, **kwargs
        )
        trace_p.compute_log_prob(lambda name, site: name in sites_p)
        trace_q.compute_log_prob(lambda name, site: name in sites_q)
        log_p = sum_sites_per_particle(trace_p, sites_p, dim, num_samples)
        log_q = sum_sites_per_particle(trace_q, sites_q, dim, num_samples)
    return (log_p - log_q).mean()


# -- ArviZ -----------------------------------------------------------------------------------------
def to_inference_data(
    posteriors: dict[str, Callable[..., Any]],
    model: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    **kwargs: Any,
) -> dict[str, arviz.InferenceData]:
    """ArviZ ``InferenceData`` of each named posterior: ``num_samples`` draws of the model's
    latent sites in the constrained space (θ_s ~ q, the model replayed on them), one chain.

    The posterior group holds one variable per latent sample site of the model, of shape
    ``(1, num_samples, *site_shape)``. Then e.g. ``az.summary(idata["retrained"])`` or
    ``az.plot_forest(list(d.values()), model_names=list(d))``.

    Example (not run: importing arviz takes seconds)::

        d = to_inference_data({"retrained": retrained, "unlearned": unlearned}, model, x, y)
        az.summary(d["unlearned"])
    """
    import arviz as az

    out = {}
    for name, posterior in posteriors.items():
        _, trace, once, _ = _vectorized_traces(
            model, posterior, args, kwargs, num_samples, "_inference_data_samples"
        )
        draws = {}
        for site_name, site in once.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            shape = site["value"].shape
            value = trace.nodes[site_name]["value"].detach()
            if value.numel() != num_samples * shape.numel():  # constant across samples
                value = value.expand(num_samples, *shape)
            draws[site_name] = value.reshape(1, num_samples, *shape).cpu().numpy()
        out[name] = az.from_dict(posterior=draws)
    return out


# -- membership inference ------------------------------------------------------------------------
def per_example_loss(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    site: str = "y",
    num_samples: int = 100,
    **kwargs: Any,
) -> torch.Tensor:
    r"""The negative log predictive density of every example of the observed site ``site``:

    .. math:: ℓ_n = −\log \frac1S \sum_{s=1}^S p(y_n|x_n, θ_s)
              = −\mathrm{logsumexp}_s \log p(y_n|x_n, θ_s) + \log S, \qquad θ_s \sim q(θ)

    with S = ``num_samples`` θ-samples in one plate (as :func:`predictive_distribution`), without
    gradients. An example is one entry of the site's batch shape: reinterpreted event dims
    (``to_event``) are scored jointly, unlike :func:`log_predictive_density`, which splits them
    into points. Any site distribution with a ``log_prob`` works. The model must be called with
    its observations (``ValueError`` otherwise). Returns a tensor of the site's batch shape.

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y=None):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", 2):
        ...         return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def guide(y=None):  # θ is a point mass at mu = 0: ℓ = ½ y² + ½ log 2π
        ...     pyro.sample("mu", dist.Delta(torch.tensor(0.0)))
        >>> per_example_loss(model, guide, torch.tensor([0.0, 2.0]), num_samples=1)
        tensor([0.9189, 2.9189])
    """
    return _loss_and_entropy(model, posterior, args, kwargs, site, num_samples, entropy=False)[0]


def _loss_and_entropy(
    model, posterior, args, kwargs, site: str, num_samples: int, entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ℓ_n (:func:`per_example_loss`) and, with ``entropy``, the entropy of each example's
    Monte-Carlo predictive (summed over event dims), from the same θ-samples."""
    found = _PredictiveSite(model, posterior, args, kwargs, site, num_samples)
    observed = found.observed("per_example_loss")
    batch = found.shape[: len(found.shape) - found.event_dims]
    with torch.no_grad():
        log_p = found.fn.log_prob(observed.unsqueeze(found.sample_dim)).expand(batch)
        loss = math.log(num_samples) - torch.logsumexp(log_p, dim=found.sample_dim)
        if not entropy:
            return loss, None
        found.check_supported()
        if isinstance(found.base, torch.distributions.Normal):
            raise TypeError(
                f"the predictive entropy feature needs a Bernoulli or Categorical site; {site!r} "
                "is a Normal (its Monte-Carlo predictive is a mixture without a closed-form "
                "entropy): pass entropy=False, or extra features to membership_attack"
            )
        h = found.predictive().entropy()
        if found.event_dims:
            h = h.sum(tuple(range(-found.event_dims, 0)))
    return loss, h


@dataclass(frozen=True)
class MembershipAttack:
    """What :func:`membership_attack` returns: how well an attacker tells members (examples the
    model was trained on) from non-members by their losses. 0.5 (accuracy and AUC) is chance:
    nothing to tell; 1 is a perfect attack. An AUC below 0.5 means the members have *higher*
    losses than the non-members (e.g. an over-unlearned model); the threshold attack, which
    learns its direction, then scores above 0.5 again.

    Attributes:
        threshold_accuracy: cross-validated accuracy of the loss-threshold attack.
        threshold_auc: AUC of the score −loss for "member" over all examples (the
            Mann–Whitney statistic; threshold-free, nothing fitted).
        logistic_accuracy: cross-validated accuracy of logistic regression on the features.
        logistic_auc: its cross-validated AUC (mean over held-out folds).
        num_members, num_nonmembers: the group sizes given.
        num_balanced: examples per group in each balanced subsample (the smaller group's size).
        folds, repeats: the cross-validation's folds and its repeats over subsamples.
    """

    threshold_accuracy: float
    threshold_auc: float
    logistic_accuracy: float
    logistic_auc: float
    num_members: int
    num_nonmembers: int
    num_balanced: int
    folds: int
    repeats: int

    @staticmethod
    def column_names(prefix: str = "mia") -> tuple[str, ...]:
        """The names :meth:`columns` gives the four scores: ``{prefix}_accuracy`` and
        ``{prefix}_auc`` (the threshold attack), ``{prefix}_logistic_accuracy`` and
        ``{prefix}_logistic_auc``."""
        scores = ("accuracy", "auc", "logistic_accuracy", "logistic_auc")
        return tuple(f"{prefix}_{score}" for score in scores)

    def columns(self, prefix: str = "mia") -> dict[str, float]:
        """The four scores as table columns, named by :meth:`column_names`."""
        scores = (self.threshold_accuracy, self.threshold_auc)
        scores += (self.logistic_accuracy, self.logistic_auc)
        return dict(zip(self.column_names(prefix), scores, strict=True))


def _as_array(name: str, values: Any, ndim: int) -> np.ndarray:
    """A float64 NumPy copy of ``values`` (tensor or array) with ``ndim`` dims, checked."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if ndim == 2 and array.ndim == 1:
        array = array[:, None]
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dim(s), got shape {tuple(array.shape)}")
    if len(array) == 0:
        raise ValueError(f"{name} is empty: each group needs at least one example")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or ±inf)")
    return array


def _auc(member: np.ndarray, score: np.ndarray) -> float:
    """P(score_member > score_non-member) + ½ P(tie), from average ranks (Mann–Whitney U)."""
    from scipy.stats import rankdata

    positive = member == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _fit_threshold(score: np.ndarray, member: np.ndarray) -> tuple[float, float]:
    """The threshold τ and direction d ∈ {1, −1} maximising the accuracy of "member iff
    d·(score − τ) > 0" on these examples: every cut between distinct sorted scores, both
    directions, at once."""
    order = np.argsort(score, kind="stable")
    s, m = score[order], member[order]
    n = len(s)
    below = np.concatenate([[0], np.cumsum(m)])  # members among the k lowest scores
    k = np.arange(n + 1)
    accuracy_up = ((m.sum() - below) + (k - below)) / n  # members above the cut
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[:-1] < s[1:]  # a cut between tied scores is no threshold
    best = np.where(valid, np.maximum(accuracy_up, 1 - accuracy_up), -1.0)
    cut = int(np.argmax(best))
    direction = 1.0 if accuracy_up[cut] >= 1 - accuracy_up[cut] else -1.0
    if cut == 0:
        return -math.inf, direction
    if cut == n:
        return math.inf, direction
    return float((s[cut - 1] + s[cut]) / 2), direction


def membership_attack(
    member_losses: torch.Tensor | np.ndarray,
    nonmember_losses: torch.Tensor | np.ndarray,
    *,
    features: tuple[Any, Any] | None = None,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
) -> MembershipAttack:
    r"""Membership-inference attacks on per-example losses (members: the examples a model was
    trained on, e.g. the erased D_e; non-members: held-out examples from the same
    distribution). Works on plain tensors or arrays, so on any model or network.

    - **Loss threshold** (Yeom et al. 2018): "member iff d·(τ − ℓ) > 0"; τ and the direction
      d ∈ {1, −1} maximise the accuracy on the training folds and the rule is scored on the
      held-out fold (d = −1 catches members whose losses are *higher*, e.g. after
      over-unlearning). ``threshold_auc`` is the AUC of the score −ℓ over all examples,
      P(ℓ_member < ℓ_non-member) + ½ P(tie) (the Mann–Whitney statistic): threshold-free.
    - **Logistic regression** (scikit-learn's, C = 1, on features standardised by the training
      folds' mean and sd) on the loss and the
      optional extra ``features`` = ``(member_features, nonmember_features)``, arrays of shape
      (n, k) or (n,) (e.g. the predictive entropy); accuracy and AUC on the held-out folds.

    Both accuracies come from stratified ``folds``-fold cross-validation on a **balanced**
    sample: the larger group is subsampled (seeded by ``seed``) to the smaller one's size, so
    that 0.5 is chance. With ``repeats`` > 1 the subsample and the folds are drawn again and the
    scores averaged (more of the larger group used, less split noise). Every value must be
    finite; each group needs at least ``folds`` examples.

    Example::

        >>> members, nonmembers = torch.arange(10.0), torch.arange(10.0) + 20  # members: lower
        >>> attack = membership_attack(members, nonmembers)
        >>> attack.threshold_accuracy, attack.threshold_auc, attack.logistic_accuracy
        (1.0, 1.0, 1.0)
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    loss_m = _as_array("member_losses", member_losses, 1)
    loss_n = _as_array("nonmember_losses", nonmember_losses, 1)
    columns_m, columns_n = [loss_m[:, None]], [loss_n[:, None]]
    if features is not None:
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            raise ValueError(
                "features must be a pair (member_features, nonmember_features), got "
                f"{type(features).__name__}"
            )
        extra_m = _as_array("member features", features[0], 2)
        extra_n = _as_array("nonmember features", features[1], 2)
        for name, extra, loss in (("member", extra_m, loss_m), ("nonmember", extra_n, loss_n)):
            if len(extra) != len(loss):
                raise ValueError(
                    f"{name} features have {len(extra)} rows but there are {len(loss)} {name} "
                    "losses: one row per example"
                )
        if extra_m.shape[1] != extra_n.shape[1]:
            raise ValueError(
                f"member features have {extra_m.shape[1]} columns, nonmember features "
                f"{extra_n.shape[1]}: the same features for both groups"
            )
        columns_m.append(extra_m)
        columns_n.append(extra_n)
    x_m, x_n = np.concatenate(columns_m, 1), np.concatenate(columns_n, 1)
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    size = min(len(x_m), len(x_n))
    if size < folds:
        raise ValueError(
            f"{folds}-fold cross-validation needs at least {folds} examples in each group; got "
            f"{len(x_m)} members and {len(x_n)} non-members"
        )
    labels = np.concatenate([np.ones(len(loss_m)), np.zeros(len(loss_n))])
    auc = _auc(labels, -np.concatenate([loss_m, loss_n]))
    rng = np.random.default_rng(seed)
    member = np.concatenate([np.ones(size), np.zeros(size)])
    threshold_correct = logistic_correct = 0.0
    logistic_aucs = []
    # the inputs are checked above: scikit-learn's own validation would double each tiny fit
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for _ in range(repeats):  # repeats of subsample and folds; each is `folds` tiny fits
            x = np.concatenate(
                [x_m[rng.permutation(len(x_m))[:size]], x_n[rng.permutation(len(x_n))[:size]]]
            )
            split = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))
            for train, test in split.split(x, member):
                tau, direction = _fit_threshold(-x[train, 0], member[train])
                guess = direction * (-x[test, 0] - tau) > 0
                threshold_correct += float((guess == member[test]).sum())
                mean, sd = x[train].mean(0), x[train].std(0)
                sd[sd == 0] = 1.0
                attacker = LogisticRegression().fit((x[train] - mean) / sd, member[train])
                logit = attacker.decision_function((x[test] - mean) / sd)
                logistic_correct += float(((logit > 0) == member[test]).sum())
                logistic_aucs.append(_auc(member[test], logit))
    total = 2 * size * repeats
    return MembershipAttack(
        threshold_accuracy=threshold_correct / total,
        threshold_auc=auc,
        logistic_accuracy=logistic_correct / total,
        logistic_auc=float(np.mean(logistic_aucs)),
        num_members=len(loss_m),
        num_nonmembers=len(loss_n),
        num_balanced=size,
        folds=folds,
        repeats=repeats,
    )


def membership_inference(
    model: Callable[..., Any],
    posteriors: dict[str, Callable[..., Any]],
    members: Sequence[Any],
    nonmembers: Sequence[Any],
    *,
    site: str = "y",
    num_samples: int = 100,
    entropy: bool = False,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
) -> dict[str, MembershipAttack]:
    """:func:`membership_attack` on each named posterior: the members' and non-members'
    :func:`per_example_loss` under it (``members`` and ``nonmembers`` are the model's
    arguments, e.g. ``(x_e, y_e)`` and ``(x_test, y_test)``, observations included), with the
    entropy of each example's Monte-Carlo predictive as an extra logistic-regression feature
    when ``entropy`` (Bernoulli and Categorical sites). For unlearning: members = D_e,
    non-members = held-out examples from D_e's distribution; the retrained posterior's scores
    are the target (0.5 when the two groups are alike), q(θ|D)'s the baseline.

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y=None):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         return pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def at(m):
        ...     return lambda y=None: pyro.sample("mu", dist.Delta(torch.tensor(m)))
        >>> seen, unseen = (torch.linspace(-0.5, 0.5, 10),), (torch.linspace(3.0, 4.0, 10),)
        >>> attacks = membership_inference(model, {"fit": at(0.0), "far": at(10.0)}, seen, unseen)
        >>> attacks["fit"].threshold_auc, attacks["far"].threshold_auc  # far: members *worse*
        (1.0, 0.0)
    """
    if not posteriors:
        raise ValueError("posteriors is empty: give at least one {name: posterior}")
    out = {}
    for name, posterior in posteriors.items():
        scored = [
            _loss_and_entropy(model, posterior, tuple(a), {}, site, num_samples, entropy)
            for a in (members, nonmembers)
        ]
        (loss_m, h_m), (loss_n, h_n) = scored
        extra = None if not entropy else (h_m.reshape(-1), h_n.reshape(-1))
        out[name] = membership_attack(
            loss_m.reshape(-1),
            loss_n.reshape(-1),
            features=extra,
            folds=folds,
            repeats=repeats,
            seed=seed,
        )
    return out
