"""θ-samples in one plate, and the observed site's distribution at all of them: what every metric
of :mod:`pyro_unlearn.metrics` is computed from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

from ..traces import max_plate_nesting, vectorization_problem
from ..validation import check_finite_data, check_positive_int

__all__ = ["SUPPORTED", "PredictiveSite", "check_metric_call", "vectorized_traces"]

#: The site distributions whose Monte-Carlo predictive has a closed form here.
SUPPORTED = "Bernoulli, Categorical, Normal"
_WRAPPERS = (torch.distributions.Independent, MaskedDistribution, ExpandedDistribution)


def vectorized_traces(
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
    enclosing SVI) and ``torch.no_grad()``. A model that cannot take the sample plate
    (:func:`~pyro_unlearn.traces.vectorization_problem`, e.g. Pyro's regression tutorial's
    ``PyroModule[nn.Linear]`` with ``PyroSample`` weights) is run once per draw instead, and its
    sites stacked in the same layout (:func:`sequential_model_trace`).
    """
    num_samples = check_positive_int("num_samples", num_samples)
    if not callable(posterior):
        raise TypeError(f"the posterior must be a guide (callable), got {type(posterior).__name__}")
    with torch.no_grad(), poutine.block():
        guide_once = _traced(posterior, args, kwargs, "the posterior")
        model_once = None if model is None else _traced(model, args, kwargs, "the model")
        if model_once is not None:
            _check_fits(guide_once, model_once)
        nesting = max_plate_nesting(guide_once)
        if model_once is not None:
            nesting = max(nesting, max_plate_nesting(model_once))
        dim = -nesting - 1
        guide_trace = poutine.trace(pyro.plate(name, num_samples, dim=dim)(posterior)).get_trace(
            *args, **kwargs
        )
        model_trace = None
        if model is not None and num_samples > 1:
            if vectorization_problem(model, posterior, args, kwargs, num_samples, nesting):
                model_trace = sequential_model_trace(model, posterior, args, kwargs, num_samples)
                return guide_once, model_trace, model_once, dim
        if model is not None:
            vectorized = pyro.plate(name, num_samples, dim=dim)(model)
            model_trace = poutine.trace(poutine.replay(vectorized, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
    return guide_trace, model_trace, model_once, dim


def sequential_model_trace(
    model: Callable[..., Any], posterior: Callable[..., Any], args: tuple, kwargs: dict, num: int
) -> Trace:
    """θ_s ~ posterior and the model replayed on each, one draw at a time, stacked into one
    trace laid out as the sample plate lays it out: every sample site's value (and, for a
    Normal, Bernoulli or Categorical site, its distribution; ``None`` otherwise) gains a leading
    dim of ``num`` draws, padded with 1s to the model's plate nesting."""
    traces = []
    for _ in range(num):
        guide_trace = poutine.trace(posterior).get_trace(*args, **kwargs)
        traces.append(
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        )
    nesting = max_plate_nesting(traces[0])
    stacked = Trace()
    for name, site in traces[0].nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        sites = [trace.nodes[name] for trace in traces]
        pad = (1,) * max(0, nesting - len(site["fn"].batch_shape))
        value = torch.stack([s["value"].reshape(pad + s["value"].shape) for s in sites])
        fn = _stacked_distribution([s["fn"] for s in sites], pad)
        stacked.add_node(name, **{**site, "value": value, "fn": fn})
    return stacked


def _stacked_distribution(fns: list, pad: tuple[int, ...]) -> Any:
    """The per-draw distributions of one site as one, draws first; ``None`` unless the base is
    Normal, Bernoulli or Categorical (behind ``Independent`` and ``expand``)."""
    events, shape, base = 0, fns[0].batch_shape + fns[0].event_shape, fns[0]
    while isinstance(base, torch.distributions.Independent | ExpandedDistribution):
        if isinstance(base, torch.distributions.Independent):
            events += base.reinterpreted_batch_ndims
        base = base.base_dist
    kinds = {
        torch.distributions.Normal: (dist.Normal, ("loc", "scale")),
        torch.distributions.Bernoulli: (dist.Bernoulli, ("logits",)),
        torch.distributions.Categorical: (dist.Categorical, ("logits",)),
    }
    kind = next((k for k in kinds if isinstance(base, k)), None)
    if kind is None:
        return None
    make, params = kinds[kind]
    batch = shape[: len(shape) - len(base.event_shape)]
    stacked = {}
    for param in params:
        values = []
        for fn in fns:
            while not isinstance(fn, kind):
                fn = fn.base_dist
            value = getattr(fn.expand(batch), param)
            values.append(value.reshape(pad + value.shape))
        stacked[param] = torch.stack(values)
    out = make(**stacked)
    return out.to_event(events) if events else out


def check_metric_call(site: Any, args: tuple, kwargs: dict) -> None:
    """A metric's call checked before anything is sampled: ``site`` a name, the data finite
    (the first non-finite row of the offending argument named).

    Example:
        >>> check_metric_call("y", (torch.tensor([1.0, float("inf")]),), {})
        Traceback (most recent call last):
        ...
        ValueError: args[0] has a non-finite value (inf) at row 1: the data must be finite
    """
    if not isinstance(site, str):
        raise TypeError(f"site must be the name of a sample site (a str), got {site!r}")
    check_finite_data(args, kwargs)


def _traced(fn: Callable[..., Any], args: tuple, kwargs: dict, what: str) -> Trace:
    """One trace of ``fn``; a plate of size 0 (empty data) named as such."""
    try:
        return poutine.trace(fn).get_trace(*args, **kwargs)
    except ZeroDivisionError as error:  # pyro.plate's "size cannot be zero"
        raise ValueError(f"{what} has a plate of size 0 ({error}): the data are empty") from error


def _check_fits(guide_trace: Trace, model_trace: Trace) -> None:
    """Every latent site the posterior shares with the model has the model's shape: a posterior
    of another model is refused before its draws are replayed."""
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or name not in model_trace.nodes:
            continue
        model_site = model_trace.nodes[name]
        if model_site["type"] != "sample":
            continue
        if site["value"].shape != model_site["value"].shape:
            raise ValueError(
                f"the posterior's site {name!r} has shape {tuple(site['value'].shape)}, the "
                f"model's {tuple(model_site['value'].shape)}: is it a posterior of this model?"
            )


class PredictiveSite:
    """The observed site's distribution p(y|x, θ_s) for all s at once, unwrapped.

    ``base`` is the innermost distribution (``Independent``, masks and ``expand`` wrappers
    removed); ``shape`` the full shape of one θ-sample's y including the sample dim at
    ``sample_dim`` (a non-negative index), so that ``points`` is ``shape`` without it: every
    scalar observation (reinterpreted event dims become points, each with its marginal
    predictive). ``value`` is the observed value, or ``None`` when the site was not observed;
    ``fn`` the wrapped per-θ distribution, which scores an example jointly over its
    ``event_dims``.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        posterior: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        site: str,
        num_samples: int,
    ) -> None:
        check_metric_call(site, args, kwargs)
        guide_trace, trace, _, dim = vectorized_traces(
            model, posterior, args, kwargs, num_samples, "_predictive_samples"
        )
        if site not in trace.nodes or trace.nodes[site]["type"] != "sample":
            names = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
            raise ValueError(f"the model has no sample site {site!r}; its sample sites: {names}")
        if site in guide_trace.nodes and not site_is_subsample(guide_trace.nodes[site]):
            raise ValueError(f"{site!r} is a latent site of the posterior, not an observed site")
        node = trace.nodes[site]
        fn = node["fn"]
        if fn is None:  # a model run once per draw, and a site it cannot stack
            raise TypeError(
                f"site {site!r} is not a {SUPPORTED} site (run once per draw: the model cannot "
                "take a sample plate)"
            )
        self.shape = fn.batch_shape + fn.event_shape
        self.sample_dim = len(fn.batch_shape) + dim
        self.num_samples = num_samples
        self.points = self.shape[: self.sample_dim] + self.shape[self.sample_dim + 1 :]
        if self.points.numel() == 0:
            raise ValueError(f"site {site!r} has no data points (shape {tuple(self.points)})")
        base = fn
        while isinstance(base, _WRAPPERS):
            base = base.base_dist
        self.base = base
        self.value = node["value"] if node["is_observed"] else None
        self.site = site
        self.fn = fn
        self.event_dims = len(fn.event_shape)

    def _full(self, param: torch.Tensor, extra: tuple[int, ...] = ()) -> torch.Tensor:
        return param.expand(self.shape + extra)

    def check_supported(self) -> None:
        """``TypeError`` unless the site is Bernoulli, Categorical or Normal."""
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
                f"is implemented for {SUPPORTED}"
            )

    def check_discrete(self, what: str, instead: str) -> None:
        """``TypeError`` unless the site is Bernoulli or Categorical (``what`` needs it)."""
        self.check_supported()
        if isinstance(self.base, torch.distributions.Normal):
            raise TypeError(
                f"{what} needs a Bernoulli or Categorical site; {self.site!r} {instead}"
            )

    def predictive(self) -> torch.distributions.Distribution:
        """The Monte-Carlo predictive (1/S) Σ_s p(y|x, θ_s) of every point."""
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
        """The observed value, in the points' shape (``ValueError`` if the site was sampled)."""
        if self.value is None:
            raise ValueError(
                f"{what} needs the observed values of site {self.site!r}: call it with the "
                "model's observations (the site was sampled, not observed)"
            )
        try:
            return self.value.expand(self.points)
        except RuntimeError as error:
            raise ValueError(
                f"the observed {self.site!r} has shape {tuple(self.value.shape)}, the site's "
                f"points {tuple(self.points)}: one observation per point"
            ) from error
