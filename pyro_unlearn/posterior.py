"""The frozen posterior q(θ|D): an immutable snapshot of a trained guide.

Pyro keeps a guide's parameters in the global param store, and ``copy.deepcopy`` of an
AutoGuide is *not* independent (its params rebind to the live guide's on the next call). The
frozen posterior therefore keeps its own parameter tensors (``requires_grad=False``, from an
independent deep copy) in a :class:`~pyro_unlearn.params.ParamSnapshot` and runs the guide with
that snapshot as the param store and its parameters hidden, so neither later training of the
live guide nor an SVI step can change it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from .guides.gaussian import GAUSSIAN_DISTRIBUTIONS
from .params import ParamSnapshot
from .traces import latent_sites, max_plate_nesting, sum_sites_per_particle

__all__ = ["FrozenPosterior", "freeze", "independent_copy"]


def _base_distribution(fn: Any) -> Any:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def _support(fn: Any) -> Any:
    try:
        return fn.support
    except NotImplementedError:  # e.g. pyro.contrib.zuko.ZukoToPyro: a flow over R^d
        return torch.distributions.constraints.real_vector


def _clear_transform_caches(module: torch.nn.Module) -> None:
    # Pyro's AffineAutoregressive keeps non-leaf tensors from its last call, GPyTorch's variational
    # strategies those of theirs (cleared by their ``_clear_cache``); deepcopy refuses them.
    for m in module.modules():
        clear = getattr(m, "_clear_cache", None)
        if callable(clear):
            clear()
        if isinstance(m, Transform):
            for name in list(vars(m)):
                if name == "_cached_x_y":
                    m._cached_x_y = (None, None)
                elif name.startswith("_cached"):
                    setattr(m, name, None)


class FrozenPosterior:
    """An immutable q(θ|D): samples, scores θ, and knows log q* = max_θ log q(θ|D).

    Build it with :func:`freeze`. Call it like a guide (``posterior(*args)``) to draw θ; its
    parameters never reach an optimiser. Densities are taken in the guide's unconstrained
    (auxiliary) space, where the mode of every Gaussian guide is exact.

    Attributes:
        log_q_max: log q* (a 0-dim tensor on the guide's device), found on first use.
        mode: the maximiser, as a dict of auxiliary-site values.
        mode_info: how log q* was obtained (``method`` "exact" or "numeric"; for "numeric" the
            ``samples`` drawn, the ``starts`` refined and the Adam ``steps`` taken).
        sites: the names of the sites it scores (the guide's auxiliary sites).
    """

    def __init__(
        self,
        guide: Callable,
        params: ParamSnapshot,
        *,
        args: tuple = (),
        kwargs: dict | None = None,
        mode: dict | None = None,
    ) -> None:
        self._guide = guide
        self._params = params
        self._args, self._kwargs = tuple(args), dict(kwargs or {})
        self._mode_settings = dict(mode or {})
        self._log_q_max: torch.Tensor | None = None
        self._mode: dict[str, torch.Tensor] = {}
        self._mode_info: dict[str, Any] = {}
        self.sites: list[str] = latent_sites(self.sample(*self._args, **self._kwargs))

    # -- running the frozen guide ---------------------------------------------------------------
    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Inside it, the global param store holds exactly the frozen parameters, so code that
        reads the frozen guide's parameters directly (e.g. ``read_gaussian(posterior.guide)``)
        sees q(θ|D) and nothing it registers leaks into the live store or the frozen state."""
        with self._params.copy().active():
            yield

    @property
    def guide(self) -> Callable:
        """The frozen copy of the guide. Read its parameters only inside :meth:`context`."""
        return self._guide

    @property
    def params(self) -> ParamSnapshot:
        """A copy of q(θ|D)'s parameters, by param-store name (new tensors: the posterior stays
        as it is whatever is done to them)."""
        return self._params.clone()

    def __call__(self, *args, **kwargs):
        with self.context(), poutine.block(hide_types=["param"]):
            return self._guide(*args, **kwargs)

    def sample(self, *args, **kwargs) -> Trace:
        """Draw θ ~ q(θ|D): a trace of the frozen guide with log-probabilities computed."""
        with poutine.block():
            trace = poutine.trace(self).get_trace(*args, **kwargs)
        trace = prune_subsample_sites(trace)
        trace.compute_log_prob()
        return trace

    def score(self, trace: Trace, *args, **kwargs) -> Trace:
        """Replay the frozen guide on ``trace`` (from a guide of the same structure) and return
        the replayed trace with log q(θ|D) computed at every site."""
        with poutine.block():
            scored = poutine.trace(poutine.replay(self, trace=trace)).get_trace(*args, **kwargs)
        scored = prune_subsample_sites(scored)
        scored.compute_log_prob()
        return scored

    def log_prob(self, trace: Trace, *args, constrained: bool = False, **kwargs) -> torch.Tensor:
        """log q(θ|D) at the θ of ``trace``: in the unconstrained (auxiliary) space by default,
        or in the constrained space (every site, Jacobians included) with ``constrained=True``."""
        scored = self.score(trace, *args, **kwargs)
        names = (
            [n for n, s in scored.nodes.items() if s["type"] == "sample"]
            if constrained
            else self.sites
        )
        return sum_sites_per_particle(scored, names, None, 1)[0]

    # -- the mode -------------------------------------------------------------------------------
    @property
    def log_q_max(self) -> torch.Tensor:
        if self._log_q_max is None:
            with torch.enable_grad():  # first use may come inside no_grad (e.g. ELBO.loss)
                self._find_mode(self._args, self._kwargs, **self._mode_settings)
        return self._log_q_max

    @property
    def mode(self) -> dict[str, torch.Tensor]:
        self.log_q_max  # noqa: B018 (found on first use)
        return self._mode

    @property
    def mode_info(self) -> dict[str, Any]:
        self.log_q_max  # noqa: B018 (found on first use)
        return self._mode_info

    def _find_mode(self, args, kwargs, *, samples: int, starts: int, steps: int, lr: float) -> None:
        trace = self.sample(*args, **kwargs)
        fns = {name: _base_distribution(trace.nodes[name]["fn"]) for name in self.sites}
        if all(isinstance(fn, GAUSSIAN_DISTRIBUTIONS) for fn in fns.values()):
            mode = {name: fn.mean.detach() for name, fn in fns.items()}
            with poutine.block():
                scored = poutine.trace(poutine.condition(self, data=mode)).get_trace(
                    *args, **kwargs
                )
            scored.compute_log_prob()
            self._log_q_max = sum_sites_per_particle(scored, self.sites, None, 1)[0].detach()
            self._mode = mode
            self._mode_info = {"method": "exact", "value": float(self._log_q_max)}
            return
        self._numeric_mode(trace, args, kwargs, samples=samples, starts=starts, steps=steps, lr=lr)

    def _numeric_mode(self, trace, args, kwargs, *, samples, starts, steps, lr) -> None:
        """Best of ``samples`` draws, refined by Adam on log q from the ``starts`` best, batched."""
        dim = -max_plate_nesting(trace) - 1

        def batched_log_q(values=None, size=samples):
            fn = pyro.plate("_mode_search", size, dim=dim)(self)
            if values is not None:
                fn = poutine.condition(fn, data=values)
            with poutine.block():
                tr = poutine.trace(fn).get_trace(*args, **kwargs)
            tr.compute_log_prob()
            return tr, sum_sites_per_particle(tr, self.sites, dim, size)

        def take(tr, idx):  # idx: a 1-D index tensor (keeps the search dim) or an int (drops it)
            out = {}
            for name in self.sites:
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
        supports = {n: biject_to(_support(tr.nodes[n]["fn"])) for n in self.sites}
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
            self._log_q_max = torch.maximum(refined[i], log_q.max()).detach()
            self._mode = take(tr, int(i))
        self._mode_info = {
            "method": "numeric",
            "value": float(self._log_q_max),
            "samples": samples,
            "starts": starts,
            "steps": steps,
        }

    # -- saving and loading ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(path, weights_only=True)`` reads it."""
        return {
            "params": dict(self._params.clone()),
            "log_q_max": self.log_q_max.detach().clone(),
            "mode": {n: v.clone() for n, v in self.mode.items()},
            "mode_info": dict(self.mode_info),
            "sites": list(self.sites),
        }

    def load_state_dict(self, state: dict[str, Any]) -> FrozenPosterior:
        """Load a :meth:`state_dict` into a posterior frozen from a guide of the same structure."""
        ours, theirs = self._params, state["params"]
        if set(ours) != set(theirs):
            raise ValueError(
                f"saved parameters {sorted(theirs)} do not match this guide's {sorted(ours)}"
            )
        for name, value in theirs.items():
            if ours[name].shape != value.shape:
                raise ValueError(
                    f"saved parameter {name!r} has shape {tuple(value.shape)}, "
                    f"this guide's has {tuple(ours[name].shape)}"
                )
        with torch.no_grad():
            for name, value in theirs.items():
                ours[name].copy_(value)
        device = next(iter(ours.values())).device if ours else None
        self._log_q_max = state["log_q_max"].to(device)
        self._mode = {n: v.to(device) for n, v in state["mode"].items()}
        self._mode_info = dict(state["mode_info"])
        self.sites = list(state["sites"])
        return self

    def restore(self, guide: Callable) -> None:
        """Write q(θ|D) back into a live guide of the same structure (the start of a lazy,
        from-the-original unlearning run). Only the live guide's param-store tensors change; a
        guide that has not registered them yet is run once (with the arguments it was frozen
        with) to do so."""
        store = pyro.get_param_store()
        if any(n not in store for n in self._params):
            with poutine.block():
                poutine.trace(guide, param_only=True).get_trace(*self._args, **self._kwargs)
        missing = [n for n in self._params if n not in store]
        if missing:
            raise ValueError(f"the live guide has no parameters {missing}; call it once first")
        self._params.restore()

    def __repr__(self) -> str:
        is_module = isinstance(self._guide, PyroModule)
        kind = type(self._guide).__name__ if is_module else self._guide.__name__
        found = "not yet found" if self._log_q_max is None else f"{float(self._log_q_max):.4g}"
        return f"FrozenPosterior({kind}, log_q_max={found}, sites={self.sites})"


def independent_copy(guide: PyroModule) -> PyroModule:
    """A deep copy of a PyroModule guide that shares nothing with it, not even param-store names'
    tensors: run it against a private store (``ParamSnapshot().register(copy, *args)``) and it
    registers its own copies.

    ``AutoGuide.__getstate__`` sets ``_model`` and ``master`` to None on the *original* during a
    deepcopy; both are given back (and the copy gets the same model reference).
    """
    _clear_transform_caches(guide)
    refs = {m: (m._model, m.master) for m in guide.modules() if isinstance(m, AutoGuide)}
    try:
        copied = copy.deepcopy(guide)
    except RuntimeError as e:
        raise TypeError(f"cannot copy {type(guide).__name__}: deepcopy failed ({e})") from e
    finally:
        for m, (model_ref, master) in refs.items():
            m._model, m.master = model_ref, master
    for m, c in zip(guide.modules(), copied.modules(), strict=True):
        if m in refs:
            c._model = refs[m][0]
    return copied


def _check_scores_external_points(posterior: FrozenPosterior) -> None:
    # Both losses score θ that the scoring guide did not draw itself (EUBO: q_u's draws under
    # q(θ|D); rKL: q(θ|D)'s draws under q_v). Probe it with cloned values (no sample cache hit).
    trace = posterior.sample(*posterior._args, **posterior._kwargs)
    for name in posterior.sites:
        trace.nodes[name]["value"] = trace.nodes[name]["value"].detach().clone()
    try:
        posterior.log_prob(trace, *posterior._args, **posterior._kwargs)
    except (KeyError, NotImplementedError) as e:
        kind = type(posterior.guide).__name__
        raise TypeError(
            f"{kind} cannot score points it did not sample itself ({type(e).__name__}: {e}), so "
            "neither Trace_EUBO (scores q_u's draws under q(θ|D)) nor ReverseKL (scores q(θ|D)'s "
            "draws under q_v) can use it. Pyro's block neural autoregressive flow is one such "
            "guide; use pyro_unlearn.AutoZukoFlow (coupling, MAF or IAF), AutoIAFNormal or a "
            "Gaussian AutoGuide instead."
        ) from e


def freeze(
    guide: Callable,
    *args,
    mode_samples: int = 1000,
    mode_starts: int = 10,
    mode_steps: int = 500,
    mode_lr: float = 0.05,
    **kwargs,
) -> FrozenPosterior:
    r"""Snapshot a trained guide as the immutable q(θ|D) that unlearning starts from.

    Works for Pyro AutoGuides (and any :class:`~pyro.nn.PyroModule` guide) and for plain guide
    functions that use ``pyro.param`` (their parameters are read with
    :meth:`ParamSnapshot.take <pyro_unlearn.params.ParamSnapshot.take>`, which registers
    nothing in the live store). log q* = max_θ log q(θ|D) (the adjusted likelihood's threshold
    is log λ + log q*) is found on first use: exactly when every auxiliary site is Gaussian,
    otherwise as the best of ``mode_samples`` draws, refined by ``mode_steps`` Adam steps on
    log q from the ``mode_starts`` best, all batched (see ``mode_info``).

    Arguments:
        guide: the trained guide (a :class:`FrozenPosterior` is returned as it is).
        *args, **kwargs: the guide's arguments, needed only for guides that cannot be called
            without them.
        mode_samples, mode_starts, mode_steps, mode_lr: the numeric search for log q*.

    Returns:
        The :class:`FrozenPosterior` q(θ|D).

    Raises:
        TypeError: for a guide that is not callable, registers plain ``nn.Module``\ s from a
            function, or cannot score points it did not sample.

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example:

        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> guide = AutoNormal(model, init_scale=0.5)
        >>> posterior = freeze(guide)
        >>> round(float(posterior.log_q_max), 4)  # log N(0; 0, 0.5^2)
        -0.2258
    """
    if isinstance(guide, FrozenPosterior):
        return guide
    if not callable(guide):
        raise TypeError(f"freeze expects a guide (callable), got {type(guide)}")
    if isinstance(guide, PyroModule):
        frozen = independent_copy(guide)
        # The copy's own tensors, registered in an empty store, become the snapshot: nothing of
        # the live guide is shared. Register before switching gradients off: ``pyro.module``
        # (plain nn.Module children, e.g. a zuko flow) skips tensors that do not require grad.
        registered = ParamSnapshot()
        params = registered.select(registered.register(frozen, *args, **kwargs))
        frozen.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(False)
        for m in frozen.modules():
            if not isinstance(m, PyroModule):
                m.train(False)  # frozen plain-module tensors: pyro.module skips them quietly
    else:
        params = ParamSnapshot.take(guide, *args, **kwargs)
        modules = [n for n in params if "$$$" in n]
        if modules:
            raise TypeError(
                f"cannot freeze a guide function that registers nn.Modules ({modules[0]!r}): "
                "write the guide as a pyro.nn.PyroModule, whose tensors can be snapshot"
            )
        frozen = guide
    settings = dict(samples=mode_samples, starts=mode_starts, steps=mode_steps, lr=mode_lr)
    posterior = FrozenPosterior(frozen, params, args=args, kwargs=kwargs, mode=settings)
    _check_scores_external_points(posterior)
    return posterior
