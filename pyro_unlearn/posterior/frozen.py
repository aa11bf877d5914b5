"""The frozen posterior q(θ|D) and :func:`freeze`, which snapshots a trained guide as one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from pyro.poutine import Trace
from pyro.poutine.util import prune_subsample_sites

from ..params import ParamSnapshot
from ..traces import latent_sites, preserved_rng, sum_sites_per_particle
from ..validation import check_finite_data, check_positive, check_positive_int
from .checks import (
    check_guide_arguments,
    check_has_density,
    check_saved_state,
    check_scores_external_points,
    guide_structure,
    structure_difference,
)
from .copying import independent_copy
from .mode import find_mode

__all__ = ["FrozenPosterior", "freeze"]


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
        trace = self.sample(*self._args, **self._kwargs)
        self.sites: list[str] = latent_sites(trace)
        self._site_shapes = {name: trace.nodes[name]["value"].shape for name in self.sites}

    @property
    def site_shapes(self) -> dict[str, torch.Size]:
        """The shape of the value of every site it scores, by name (as :attr:`sites`)."""
        return dict(self._site_shapes)

    def check_guide(self, guide: Callable, *args, **kwargs) -> None:
        """Raise unless ``guide`` has this posterior's structure: the same parameters (names and
        shapes) and the same scored sites (names and shapes). Nothing is changed: a
        ``PyroModule`` guide is probed through an independent copy in a private param store, a
        guide function against a private view of the live store.

        Arguments:
            guide: a live guide.
            *args, **kwargs: its arguments (default: those this posterior was frozen with).

        Raises:
            ValueError: naming the first parameter or site that is missing, extra or of another
                shape, or when the guide cannot run with those arguments.

        Example:
            >>> import pyro, torch, pyro.distributions as dist
            >>> from pyro.infer.autoguide import AutoNormal
            >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0)))
            >>> posterior = freeze(guide)
            >>> posterior.check_guide(guide)
            >>> other = AutoNormal(lambda: pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0)))
            >>> posterior.check_guide(other)
            Traceback (most recent call last):
            ...
            ValueError: the guide does not have the frozen posterior's structure: parameter ...
        """
        if not args and not kwargs:
            args, kwargs = self._args, self._kwargs
        if isinstance(guide, FrozenPosterior):
            params, sites = {n: v.shape for n, v in guide.params.items()}, guide.site_shapes
        else:
            params, sites = guide_structure(guide, args, kwargs)
        ours = {n: v.shape for n, v in self._params.items()}
        for what, theirs, mine in (("parameter", params, ours), ("site", sites, self._site_shapes)):
            problem = structure_difference(theirs, mine)
            if problem is not None:
                raise ValueError(
                    f"the guide does not have the frozen posterior's structure: {what} "
                    f"{problem}; freeze a trained guide of the same class, model and data shapes"
                )

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

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
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
                found = find_mode(self, self._args, self._kwargs, **self._mode_settings)
            self._log_q_max, self._mode, self._mode_info = found
        return self._log_q_max

    @property
    def mode(self) -> dict[str, torch.Tensor]:
        self.log_q_max  # noqa: B018 (found on first use)
        return self._mode

    @property
    def mode_info(self) -> dict[str, Any]:
        self.log_q_max  # noqa: B018 (found on first use)
        return self._mode_info

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

    def load_state_dict(self, state: Mapping[str, Any]) -> FrozenPosterior:
        """Load a :meth:`state_dict` into a posterior frozen from a guide of the same structure.

        All or nothing: every key, the parameters' names, shapes, dtypes and finiteness, the
        sites and the mode's shapes are checked before anything is replaced.

        Arguments:
            state: a :meth:`state_dict` (e.g. from ``torch.load(path, weights_only=True)``).

        Returns:
            This posterior.

        Raises:
            ValueError: naming what does not match; the posterior is then left as it was.

        Example:
            >>> import pyro, torch, pyro.distributions as dist
            >>> from pyro.infer.autoguide import AutoNormal
            >>> posterior = freeze(AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0))))
            >>> state = posterior.state_dict()
            >>> _ = posterior.load_state_dict(state)
            >>> del state["mode"]
            >>> posterior.load_state_dict(state)
            Traceback (most recent call last):
            ...
            ValueError: the saved state lacks the key(s) ['mode']: ...
        """
        check_saved_state(state, self._params, self.sites, self._site_shapes)
        with torch.no_grad():
            for name, value in state["params"].items():
                self._params[name].copy_(value)
        device = next(iter(self._params.values())).device if self._params else None
        self._log_q_max = state["log_q_max"].detach().reshape(()).to(device)
        self._mode = {n: v.detach().to(device) for n, v in state["mode"].items()}
        self._mode_info = dict(state["mode_info"])
        return self

    def restore(self, guide: Callable) -> None:
        """Write q(θ|D) into the parameters of the live guide ``guide``.

        ``guide`` is first checked to have this posterior's structure (:meth:`check_guide`:
        parameter and site names and shapes); then run once against the live param store (with
        the arguments the posterior was frozen with), which registers its parameters if it has
        not yet and binds it to the store's tensors, and q(θ|D) is written into exactly the
        parameters it read, in place. Nothing is written when a check fails.

        A frozen guide may take over for targets that are not Pyro guides: when it defines
        ``restore_into(posterior, target)`` and that returns ``True``, it has written q(θ|D)
        into ``target`` itself (a frozen GPyTorch q(u|D),
        :class:`~pyro_unlearn.contrib.gpytorch.InducingGuide`, writes into a GP's q(u)).

        Arguments:
            guide: the live guide, of the same structure as the one frozen (or a target the
                frozen guide's ``restore_into`` takes).

        Raises:
            ValueError: when ``guide`` has another structure.

        Example:
            >>> import pyro, torch, pyro.distributions as dist
            >>> from pyro.infer.autoguide import AutoNormal
            >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)))
            >>> _ = guide()
            >>> posterior = freeze(guide)
            >>> _ = pyro.param("AutoNormal.locs.mu").data.fill_(3.0)  # the live guide moves on
            >>> posterior.restore(guide)
            >>> pyro.param("AutoNormal.locs.mu").item()
            0.0
        """
        restore_into = getattr(self._guide, "restore_into", None)
        if callable(restore_into) and restore_into(self, guide):
            return
        self.check_guide(guide)
        with preserved_rng(self._args, self._kwargs), poutine.block():
            trace = poutine.trace(guide, param_only=True).get_trace(*self._args, **self._kwargs)
        names = [n for n, site in trace.nodes.items() if site["type"] == "param"]
        _check_bound_to_store(guide)
        self._params.select(names).restore()

    def __repr__(self) -> str:
        is_module = isinstance(self._guide, PyroModule)
        kind = type(self._guide).__name__ if is_module else self._guide.__name__
        found = "not yet found" if self._log_q_max is None else f"{float(self._log_q_max):.4g}"
        return f"FrozenPosterior({kind}, log_q_max={found}, sites={self.sites})"


def _check_finite_parameter(name: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"the guide's parameter {name!r} is not finite: q(θ|D) must be a trained guide with "
            "finite parameters (did its training diverge?)"
        )


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
    nothing in the live store). The snapshot holds the guide's parameters only: a model's own
    ``pyro.param``\ s (an empirical-Bayes prior scale) stay in the live param store, where the
    model reads them and where unlearning holds them fixed (the losses hide them from the
    optimiser). log q* = max_θ log q(θ|D) (the adjusted likelihood's threshold
    is log λ + log q*) is found on first use: exactly when every auxiliary site is Gaussian,
    otherwise as the best of ``mode_samples`` draws, refined by ``mode_steps`` Adam steps on
    log q from the ``mode_starts`` best, all batched (see ``mode_info``).

    Arguments:
        guide: the trained guide (a :class:`FrozenPosterior` is returned as it is).
        *args, **kwargs: the guide's arguments, needed only for guides that cannot be called
            without them (a guide function ``def guide(data)``, as Pyro's tutorials write it:
            ``freeze(guide, data)``).
        mode_samples, mode_starts, mode_steps, mode_lr: the numeric search for log q*.

    Returns:
        The :class:`FrozenPosterior` q(θ|D).

    Raises:
        TypeError: for a guide that is not callable, is not given the arguments its signature
            requires (naming them and the call to make), registers plain ``nn.Module``\ s from
            a function, or cannot score points it did not sample.

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
    settings = dict(
        samples=check_positive_int("mode_samples", mode_samples),
        starts=check_positive_int("mode_starts", mode_starts),
        steps=check_positive_int("mode_steps", mode_steps),
        lr=check_positive("mode_lr", mode_lr),
    )
    if settings["starts"] > settings["samples"]:
        raise ValueError(
            f"mode_starts ({mode_starts}) must not exceed mode_samples ({mode_samples}): the "
            "search refines the best mode_starts of mode_samples draws"
        )
    check_finite_data(args, kwargs)
    check_guide_arguments(guide, args, kwargs, "pu.freeze")
    if isinstance(guide, PyroModule):
        for name, value in guide.named_parameters():
            _check_finite_parameter(f"{type(guide).__name__}.{name}", value)
        frozen = independent_copy(guide)
        # The copy's own tensors, registered in an empty store, become the snapshot: nothing of
        # the live guide is shared. Register before switching gradients off: ``pyro.module``
        # (plain nn.Module children, e.g. a zuko flow) skips tensors that do not require grad.
        registered = ParamSnapshot()
        try:
            params = registered.select(registered.register(frozen, *args, **kwargs))
        except TypeError as e:  # an AutoGuide never run calls its model with no arguments
            if not isinstance(guide, AutoGuide) or guide.prototype_trace is not None:
                raise
            name = type(guide).__name__
            raise TypeError(
                f"the {name} has not been run, and its model cannot be called with the "
                f"arguments given ({e}): train the guide first, or pass the model's arguments: "
                "pu.freeze(guide, *args)"
            ) from e
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
    for name, value in params.items():
        _check_finite_parameter(name, value)
    posterior = FrozenPosterior(frozen, params, args=args, kwargs=kwargs, mode=settings)
    check_has_density(posterior, *args, **kwargs)
    check_scores_external_points(posterior, *args, **kwargs)
    return posterior


def _check_bound_to_store(guide: Callable) -> None:
    """Refuse a module guide whose own tensors are not the param store's: after
    ``pyro.clear_param_store()`` another guide may have registered parameters under the same
    names, and writing into the store would move that guide, not this one."""
    if not isinstance(guide, torch.nn.Module):
        return
    store = pyro.get_param_store()
    stale = [name for name, p in guide.named_parameters() if store.param_name(p) is None]
    if stale:
        raise ValueError(
            f"the guide's parameters {stale} are not the param store's tensors (was "
            "pyro.clear_param_store() called after this guide was built, and another guide "
            "registered the same names?): restoring would write into that other guide. Restore "
            "into the guide that now owns the store's parameters, or rebuild this one"
        )
