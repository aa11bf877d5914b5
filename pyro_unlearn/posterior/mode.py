"""The mode of a frozen posterior and log q* = max_θ log q(θ|D): exact or by a batched search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from torch.distributions import biject_to

from ..guides.gaussian import GAUSSIAN_DISTRIBUTIONS
from ..traces import max_plate_nesting, sum_sites_per_particle

if TYPE_CHECKING:
    from .frozen import FrozenPosterior

__all__ = ["find_mode"]

# What find_mode returns: ``(log q*, the mode by site, how it was found)``.
Mode = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]


def _base_distribution(fn: Any) -> Any:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _support(fn: Any) -> Any:
    try:
        return fn.support
    except NotImplementedError:  # e.g. pyro.contrib.zuko.ZukoToPyro: a flow over R^d
        return torch.distributions.constraints.real_vector


def find_mode(
    posterior: FrozenPosterior,
    args: tuple,
    kwargs: dict,
    *,
    samples: int,
    starts: int,
    steps: int,
    lr: float,
) -> Mode:
    r"""log q* = max_θ log q(θ|D) and its maximiser θ*, in the guide's auxiliary space.

    Exact when every auxiliary site is Gaussian (θ* is the mean); otherwise the best of
    ``samples`` draws, refined by ``steps`` Adam steps on log q from the ``starts`` best, all
    batched in one plate.

    Arguments:
        posterior: the frozen posterior q(θ|D).
        args, kwargs: the guide's arguments.
        samples, starts, steps, lr: the numeric search (unused when the guide is Gaussian).

    Returns:
        ``(log_q_max, mode, info)``: log q* (0-dim, detached), θ* by site, and how it was found
        (``method`` "exact" or "numeric"; for "numeric" the ``samples``, ``starts`` and
        ``steps``).

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_unlearn import freeze
        >>> model = lambda: pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> posterior = freeze(AutoNormal(model, init_scale=0.5))
        >>> log_q_max, mode, info = find_mode(posterior, (), {}, samples=10, starts=2, steps=5,
        ...                                   lr=0.1)
        >>> info["method"], mode["mu_unconstrained"].item(), round(float(log_q_max), 4)
        ('exact', 0.0, -0.2258)
    """
    trace = posterior.sample(*args, **kwargs)
    fns = {name: _base_distribution(trace.nodes[name]["fn"]) for name in posterior.sites}
    if all(isinstance(fn, GAUSSIAN_DISTRIBUTIONS) for fn in fns.values()):
        mode = {name: fn.mean.detach() for name, fn in fns.items()}
        with poutine.block():
            scored = poutine.trace(poutine.condition(posterior, data=mode)).get_trace(
                *args, **kwargs
            )
        scored.compute_log_prob()
        log_q_max = sum_sites_per_particle(scored, posterior.sites, None, 1)[0].detach()
        return log_q_max, mode, {"method": "exact", "value": float(log_q_max)}
    return _numeric_mode(
        posterior, trace, args, kwargs, samples=samples, starts=starts, steps=steps, lr=lr
    )


def _numeric_mode(
    posterior: FrozenPosterior,
    trace: Trace,
    args: tuple,
    kwargs: dict,
    *,
    samples: int,
    starts: int,
    steps: int,
    lr: float,
) -> Mode:
    """Best of ``samples`` draws, refined by Adam on log q from the ``starts`` best, batched."""
    dim = -max_plate_nesting(trace) - 1
    sites = posterior.sites

    def batched_log_q(values=None, size=samples):
        fn = pyro.plate("_mode_search", size, dim=dim)(posterior)
        if values is not None:
            fn = poutine.condition(fn, data=values)
        with poutine.block():
            tr = poutine.trace(fn).get_trace(*args, **kwargs)
        tr.compute_log_prob()
        return tr, sum_sites_per_particle(tr, sites, dim, size)

    def take(tr, idx):  # idx: a 1-D index tensor (keeps the search dim) or an int (drops it)
        out = {}
        for name in sites:
            site = tr.nodes[name]
            value = site["value"].detach()
            pos = value.dim() - site["fn"].event_dim + dim
            out[name] = (
                value.index_select(pos, idx) if torch.is_tensor(idx) else value.select(pos, idx)
            )
        return out

    with torch.no_grad():
        tr, log_q = batched_log_q()
    starts = min(starts, samples)
    best = log_q.topk(starts).indices
    init = take(tr, best)
    supports = {n: biject_to(_support(tr.nodes[n]["fn"])) for n in sites}
    free = {n: supports[n].inv(v).clone().requires_grad_(True) for n, v in init.items()}
    optim = torch.optim.Adam(list(free.values()), lr=lr)
    for _ in range(steps):
        optim.zero_grad()
        # clone: biject_to(real) is the identity, and a transform's cache (Pyro's affine
        # autoregressive) would return last step's inverse, from a freed graph, for z itself
        values = {n: supports[n](z).clone() for n, z in free.items()}
        _, refined = batched_log_q(values, starts)
        (-refined.sum()).backward()
        optim.step()
    with torch.no_grad():
        values = {n: supports[n](z) for n, z in free.items()}
        tr, refined = batched_log_q(values, starts)
        i = refined.argmax()
        log_q_max = torch.maximum(refined[i], log_q.max()).detach()
        mode = take(tr, int(i))
    info = {
        "method": "numeric",
        "value": float(log_q_max),
        "samples": samples,
        "starts": starts,
        "steps": steps,
    }
    return log_q_max, mode, info
