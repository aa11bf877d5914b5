"""The checks of what a frozen posterior is given: a live guide to match, a saved state to load."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch.nn import Module

from ..params import ParamSnapshot
from ..traces import latent_sites, preserved_rng
from ..validation import check_finite
from .copying import independent_copy

if TYPE_CHECKING:
    from .frozen import FrozenPosterior

__all__ = [
    "check_guide_arguments",
    "check_has_density",
    "check_saved_state",
    "check_saved_tensor",
    "check_scores_external_points",
    "guide_structure",
    "structure_difference",
]

Shapes = dict[str, torch.Size]


def _guide_name(guide: Callable) -> str:
    return (
        type(guide).__name__ if isinstance(guide, Module) else getattr(guide, "__name__", "guide")
    )


def check_guide_arguments(guide: Callable, args: tuple, kwargs: dict, caller: str) -> None:
    """Raise, naming what to pass, unless ``guide`` can be called with ``args`` and ``kwargs``:
    a plain guide function (Pyro's coin tutorial: ``def guide(data)``) takes the data it was
    trained with, and so must ``caller`` (``pu.freeze(guide, data)``).

    Only the guide's signature is read; nothing runs. A guide without one (a builtin) passes.

    Arguments:
        guide: the guide.
        args, kwargs: the arguments ``caller`` was given for it.
        caller: the call to name in the message, e.g. ``"pu.freeze"``.

    Raises:
        TypeError: naming the guide's parameters that were not given and the call to make.

    Example:
        >>> def guide(data):
        ...     pass
        >>> check_guide_arguments(guide, (), {}, "pu.freeze")
        Traceback (most recent call last):
        ...
        TypeError: pu.freeze could not call the guide 'guide' with the arguments given (...); it
        needs ['data']: pass the guide's arguments after it, as it was trained: pu.freeze(guide,
        data)
    """
    try:  # a module's __call__ takes anything: read its forward's
        signature = inspect.signature(guide.forward if isinstance(guide, Module) else guide)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        required = [
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        try:
            bound = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:  # too many arguments, or an unknown keyword
            bound = {}
        missing = [p for p in required if p not in bound] or required
        name = _guide_name(guide)
        call = ", ".join([name, *required])
        raise TypeError(
            f"{caller} could not call the guide {name!r} with the arguments given ({e}); it "
            f"needs {missing}: pass the guide's arguments after it, as it was trained: "
            f"{caller}({call})"
        ) from None


def guide_structure(guide: Callable, args: tuple, kwargs: dict) -> tuple[Shapes, Shapes]:
    """The parameter shapes and scored-site shapes of a live guide, probed without changing
    anything: a ``PyroModule`` guide runs as an independent copy in a private param store, a
    guide function against a private view of the live store.

    Arguments:
        guide: a live guide.
        args, kwargs: its arguments.

    Returns:
        ``({param name: shape}, {site name: shape})``, the sites being its latent sites.

    Raises:
        ValueError: when ``guide`` is not callable or cannot run with those arguments.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0)))
        >>> params, sites = guide_structure(guide, (), {})
        >>> sorted(params), sites
        (['AutoNormal.locs.mu', 'AutoNormal.scales.mu'], {'mu_unconstrained': torch.Size([2])})
    """
    if not callable(guide):
        raise ValueError(f"expected a guide (callable), got {type(guide).__name__}")
    if isinstance(guide, PyroModule):
        probe, store = independent_copy(guide), ParamSnapshot()
    else:
        probe, store = guide, ParamSnapshot.of_store(clone=False)
    try:
        with preserved_rng(args, kwargs), store.active(), poutine.block(), torch.no_grad():
            trace = poutine.trace(probe).get_trace(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure of the user's guide, named
        raise ValueError(
            f"could not run the guide with the posterior's arguments ({type(e).__name__}: {e}); "
            "call the guide once on the data first, or freeze it with its arguments"
        ) from e
    params = {n: store[n].shape for n, s in trace.nodes.items() if s["type"] == "param"}
    sites = {n: trace.nodes[n]["value"].shape for n in latent_sites(trace)}
    return params, sites


def structure_difference(theirs: Shapes, ours: Shapes) -> str | None:
    """How the guide's ``{name: shape}`` differs from the posterior's.

    Arguments:
        theirs: the live guide's names and shapes.
        ours: the frozen posterior's.

    Returns:
        The first difference, in words, or ``None`` when they are the same.

    Example:
        >>> structure_difference({"a": torch.Size([2])}, {"a": torch.Size([3])})
        "'a' has shape (2,) in the guide, (3,) frozen"
    """
    extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    if extra or missing:
        return f"names differ (the guide's has {extra or 'no'} extra, lacks {missing or 'none'})"
    for name, shape in ours.items():
        if theirs[name] != shape:
            return f"{name!r} has shape {tuple(theirs[name])} in the guide, {tuple(shape)} frozen"
    return None


def check_has_density(posterior: FrozenPosterior, *args: Any, **kwargs: Any) -> None:
    """Raise unless every latent site of the frozen guide has a density: a point mass
    (``AutoDelta``, a ``Delta`` site: a MAP or MLE fit) has none to divide by a likelihood.

    Arguments:
        posterior: the frozen posterior.
        *args, **kwargs: the guide's arguments.

    Raises:
        TypeError: naming the site and what to use instead.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoDelta
        >>> import pyro_unlearn as pu
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> pu.freeze(AutoDelta(model))
        Traceback (most recent call last):
        ...
        TypeError: site 'mu' of the AutoDelta is a point mass (Delta): ...
    """
    trace = posterior.sample(*args, **kwargs)
    for name in posterior.sites:
        fn = trace.nodes[name]["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, dist.Delta):
            raise TypeError(
                f"site {name!r} of the {type(posterior.guide).__name__} is a point mass (Delta): "
                "a point estimate has no density to divide by the erased likelihood. Fit a "
                "posterior with a density (a Gaussian AutoGuide, AutoLaplaceApproximation's "
                "laplace_approximation(), a flow); for point-estimate networks use pu.lcodec"
            )


def check_scores_external_points(posterior: FrozenPosterior, *args: Any, **kwargs: Any) -> None:
    """Raise unless the frozen guide can score points it did not sample itself, as both losses
    need (EUBO: q_u's draws under q(θ|D); rKL: q(θ|D)'s draws under q_v). It is probed with
    cloned values, so that no sample cache is hit.

    Arguments:
        posterior: the frozen posterior.
        *args, **kwargs: the guide's arguments.

    Raises:
        TypeError: naming the guide's class and what to use instead.
    """
    trace = posterior.sample(*args, **kwargs)
    for name in posterior.sites:
        trace.nodes[name]["value"] = trace.nodes[name]["value"].detach().clone()
    try:
        posterior.log_prob(trace, *args, **kwargs)
    except (KeyError, NotImplementedError) as e:
        kind = type(posterior.guide).__name__
        raise TypeError(
            f"{kind} cannot score points it did not sample itself ({type(e).__name__}: {e}), so "
            "neither Trace_EUBO (scores q_u's draws under q(θ|D)) nor ReverseKL (scores q(θ|D)'s "
            "draws under q_v) can use it. Pyro's block neural autoregressive flow is one such "
            "guide; use pyro_unlearn.AutoZukoFlow (coupling, MAF or IAF), AutoIAFNormal or a "
            "Gaussian AutoGuide instead."
        ) from e


def check_saved_tensor(what: str, value: Any, like: torch.Tensor) -> None:
    """Raise unless ``value`` is a finite tensor of the shape and dtype of ``like``.

    Arguments:
        what: what ``value`` is, for the message.
        value: the saved value.
        like: a tensor of the expected shape and dtype.

    Raises:
        ValueError: naming ``what`` and how it differs.

    Example:
        >>> check_saved_tensor("saved x", torch.zeros(2), torch.ones(3))
        Traceback (most recent call last):
        ...
        ValueError: saved x has shape (2,) and dtype torch.float32, this guide's has (3,) and ...
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(value).__name__}")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ValueError(
            f"{what} has shape {tuple(value.shape)} and dtype {value.dtype}, this guide's has "
            f"{tuple(like.shape)} and {like.dtype}"
        )
    check_finite(what, value)


def _dtype(value: Any) -> torch.dtype:
    return value.dtype if isinstance(value, torch.Tensor) else torch.get_default_dtype()


def check_saved_state(
    state: Any, params: Mapping[str, torch.Tensor], sites: list[str], site_shapes: Shapes
) -> None:
    """Every check of :meth:`FrozenPosterior.load_state_dict
    <pyro_unlearn.posterior.frozen.FrozenPosterior.load_state_dict>`, made before it writes
    anything: every key, the parameters' names, shapes, dtypes and finiteness, the sites and the
    mode's shapes.

    Arguments:
        state: the state to load.
        params: the posterior's parameters, by param-store name.
        sites: the sites it scores.
        site_shapes: the shape of each site's value.

    Raises:
        TypeError: when ``state`` is not a dict.
        ValueError: naming what does not match.

    Example:
        >>> check_saved_state({"params": {}, "mode": {}, "mode_info": {}, "sites": []}, {}, [], {})
        Traceback (most recent call last):
        ...
        ValueError: the saved state lacks the key(s) ['log_q_max']: save it with ...
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
    missing = sorted({"params", "log_q_max", "mode", "mode_info", "sites"} - set(state))
    if missing:
        raise ValueError(
            f"the saved state lacks the key(s) {missing}: save it with posterior.state_dict()"
        )
    theirs = state["params"]
    if not isinstance(theirs, Mapping) or set(theirs) != set(params):
        names = sorted(theirs) if isinstance(theirs, Mapping) else theirs
        raise ValueError(f"saved parameters {names} do not match this guide's {sorted(params)}")
    for name, value in theirs.items():
        check_saved_tensor(f"saved parameter {name!r}", value, params[name])
    if list(state["sites"]) != sites:
        raise ValueError(f"saved sites {list(state['sites'])} do not match this guide's {sites}")
    mode = state["mode"]
    if not isinstance(mode, Mapping) or set(mode) != set(sites):
        raise ValueError(f"the saved mode must give a value for every site {sites}")
    for name, value in mode.items():
        like = torch.empty(site_shapes[name], dtype=_dtype(value))
        check_saved_tensor(f"saved mode of site {name!r}", value, like)
    log_q_max = state["log_q_max"]
    if not isinstance(log_q_max, torch.Tensor) or log_q_max.numel() != 1:
        raise ValueError(f"the saved log_q_max must be a one-element tensor, got {log_q_max!r}")
    check_finite("the saved log_q_max", log_q_max)
    if not isinstance(state["mode_info"], Mapping):
        raise ValueError("the saved mode_info must be a dict")
