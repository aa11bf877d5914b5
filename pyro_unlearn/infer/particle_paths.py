"""Particles that fit the model: a particle plate, ``torch.func.vmap`` over the model, or a loop."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from torch.func import vmap

from ..handlers import ERASED, erased_log_likelihood, is_erased
from ..traces import (
    max_plate_nesting,
    particle_value,
    preserved_rng,
    replay_values,
    vectorization_problem,
)
from ..validation import check_plate_shapes

__all__ = [
    "VmappedModel",
    "choose_particle_path",
    "elbo_particles",
    "plate_nesting",
    "vmap_problem",
]

logger = logging.getLogger("pyro_unlearn")

#: The name of the site that carries the vmapped model's log-density per particle.
LOG_DENSITY_SITE = "_vmapped_log_density"


def plate_nesting(
    model: Callable[..., Any], guide: Callable[..., Any], args: tuple, kwargs: dict
) -> int:
    """The plate nesting of a (model, guide) pair, read off one trace of each, quietly (Pyro's
    ``ELBO`` guesses the same but logs it at INFO on every new loss).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> plate_nesting(model, pyro.infer.autoguide.AutoNormal(model), (torch.zeros(3),), {})
        1
    """
    with preserved_rng(args, kwargs), torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    check_plate_shapes(guide_trace)  # a site broadcast across a dim no plate declares
    check_plate_shapes(model_trace)
    return max(max_plate_nesting(guide_trace), max_plate_nesting(model_trace))


def _latent_prototype(model_trace: Trace) -> dict[str, tuple[Any, torch.Size]]:
    """{latent site: (its distribution, its value's shape)} of an unvectorised model trace."""
    return {
        name: (site["fn"], site["value"].shape)
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


class VmappedModel:
    r"""A model that cannot take a particle plate, run at every particle by ``torch.func.vmap``.

    Called inside the particle plate (e.g. under Pyro's ``num_particles_vectorized`` plate and a
    replay of the vectorised guide's trace), it samples the model's latent sites there (masked:
    their density is not counted here), runs ``model`` at each particle's values under
    ``vmap``, and emits one observed site holding the per-particle log-density:

    .. math:: \ell_s = \log p(D_e|θ_s) \quad (\text{``erased``}), \qquad
              \ell_s = \log p(θ_s, D) \quad (\text{``joint``}),

    flagged as erased data in the first case (read by
    :func:`~pyro_unlearn.erased_log_likelihood`), the model's whole log-density in the second
    (what ``Trace_ELBO`` needs). Gradients flow to the particles' values.

    Arguments:
        model: the model (wrapped by :func:`~pyro_unlearn.unlearn` for ``"erased"``).
        prototype: a trace of the model without the particle plate (its latent sites).
        num_particles: the particle plate's size.
        dim: the particle plate's (negative) dim.
        density: ``"erased"`` or ``"joint"``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal((w @ torch.ones(2, 1)).squeeze(), 1.0), obs=y)
        >>> prototype = pyro.poutine.trace(model).get_trace(torch.zeros(3))
        >>> vmapped = VmappedModel(model, prototype, 4, -2, "joint")
        >>> trace = pyro.poutine.trace(pyro.plate("particles", 4, dim=-2)(vmapped)).get_trace(
        ...     torch.zeros(3))
        >>> trace.nodes["_vmapped_log_density"]["fn"].log_density.shape
        torch.Size([4, 1])
    """

    def __init__(
        self, model: Callable, prototype: Trace, num_particles: int, dim: int, density: str
    ) -> None:
        self.model, self.num_particles, self.dim = model, num_particles, dim
        self.latents = _latent_prototype(prototype)
        self.density = density

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        values = {}
        with poutine.mask(mask=False):
            for name, (fn, shape) in self.latents.items():
                value = pyro.sample(name, fn)
                event_dim = fn.event_dim
                values[name] = self._per_particle(value, event_dim, shape)
        log_density = self.log_density(values, args, kwargs)
        shaped = log_density.reshape((self.num_particles,) + (1,) * (-self.dim - 1))
        zeros = torch.zeros_like(shaped).detach()
        infer = {ERASED: True} if self.density == "erased" else {}
        pyro.sample(LOG_DENSITY_SITE, dist.Delta(zeros, log_density=shaped), obs=zeros, infer=infer)

    def _per_particle(self, value: torch.Tensor, event_dim: int, shape: torch.Size):
        """A site's value in the plate → (num_particles, *shape)."""
        k = value.dim() - event_dim + self.dim
        if k < 0:  # no particle dim: the same value for every particle
            return value.reshape(shape).expand((self.num_particles,) + shape)
        value = value.movedim(k, 0)
        return value.expand((self.num_particles,) + value.shape[1:]).reshape(
            (self.num_particles,) + shape
        )

    def single(self, values: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> torch.Tensor:
        """The log-density of one particle (values without the particle dim), a 0-dim tensor."""
        trace = poutine.trace(poutine.replay(self.model, trace=replay_values(values))).get_trace(
            *args, **kwargs
        )
        if self.density == "erased":
            trace.compute_log_prob(site_filter=is_erased)
            return erased_log_likelihood(trace)[0]
        trace.compute_log_prob()
        return sum(
            site["log_prob"].sum()
            for site in trace.nodes.values()
            if site["type"] == "sample" and not site_is_subsample(site)
        )

    def log_density(
        self, values: dict[str, torch.Tensor], args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """The log-density of every particle, ``(num_particles,)``, by ``vmap``."""
        with poutine.block(), pyro.validation_enabled(False):
            return vmap(lambda v: self.single(v, args, kwargs), randomness="same")(values)


def vmap_problem(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    density: str = "erased",
) -> str | None:
    """Why :class:`VmappedModel` cannot run ``model`` at the particles of ``guide``'s particle
    plate, or ``None``: ``vmap`` raises (a data-dependent branch, an op vmap cannot batch), or
    the first and last particles' log-densities (``density`` as for :class:`VmappedModel`)
    differ from the model run on them alone."""
    dim = -nesting - 1
    with preserved_rng(args, kwargs), torch.no_grad(), poutine.block():
        prototype = poutine.trace(model).get_trace(*args, **kwargs)
        vmapped = VmappedModel(model, prototype, num_particles, dim, density)
        try:
            guide_trace = poutine.trace(pyro.plate("_vmap_probe", num_particles, dim=dim)(guide))
            guide_trace = guide_trace.get_trace(*args, **kwargs)
            values = {
                name: particle_values(guide_trace, name, dim, num_particles, fn.event_dim, shape)
                for name, (fn, shape) in vmapped.latents.items()
            }
            batched = vmapped.log_density(values, args, kwargs)
        except Exception as error:  # noqa: BLE001 - the model's own error, whatever it is
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return f"torch.func.vmap raised {type(error).__name__}: {first_line}"
        for index in (0, num_particles - 1):
            alone = vmapped.single({k: v[index] for k, v in values.items()}, args, kwargs)
            if not torch.isclose(alone, batched[index], rtol=1e-4, atol=1e-3):
                return (
                    f"vmap gives particle {index} the log-density {float(batched[index]):.6g}, "
                    f"the model alone {float(alone):.6g}"
                )
    return None


def particle_values(
    trace: Trace, name: str, dim: int, num_particles: int, event_dim: int, shape: torch.Size
) -> torch.Tensor:
    """A site's values in a vectorised trace as ``(num_particles, *shape)``."""
    if name not in trace.nodes:
        raise ValueError(f"the guide does not sample the model's latent site {name!r}")
    value = trace.nodes[name]["value"]
    return torch.stack(
        [particle_value(value, dim, event_dim, i, shape) for i in range(num_particles)]
    )


def choose_particle_path(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    what: str,
    density: str = "erased",
) -> str:
    """The particle path that fits ``model``: ``"vectorized"`` when it takes a particle plate
    (:func:`~pyro_unlearn.traces.vectorization_problem`), else ``"vmap"`` when
    :class:`VmappedModel` runs it (:func:`vmap_problem`), else ``"sequential"``. A fallback is
    logged once at INFO on the ``pyro_unlearn`` logger, with the reason.

    Arguments:
        model, guide: the pair, as the caller runs it.
        args, kwargs: their arguments.
        num_particles: particles per step (≥ 2).
        nesting: the model's own plate nesting.
        what: who asks, for the log line.
        density: what the caller needs of the model under ``vmap`` (:class:`VmappedModel`).

    Returns:
        One of :data:`~pyro_unlearn.traces.PARTICLE_PATHS`.
    """
    problem = vectorization_problem(model, guide, args, kwargs, num_particles, nesting)
    if problem is None:
        return "vectorized"
    vmap_reason = vmap_problem(model, guide, args, kwargs, num_particles, nesting, density)
    path = "vmap" if vmap_reason is None else "sequential"
    logger.info(
        "%s: the model cannot take a particle plate (%s); particles by %s%s",
        what,
        problem,
        "torch.func.vmap" if path == "vmap" else "a loop",
        "" if vmap_reason is None else f" (vmap: {vmap_reason})",
    )
    return path


def elbo_particles(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int
) -> tuple[Callable, pyro.infer.Trace_ELBO, str]:
    """A ``Trace_ELBO`` with particles that fit ``model``, the model to run it on, and the path.

    ``"vectorized"``: Pyro's particle plate; ``"vmap"``: the plate around
    :class:`VmappedModel` (the model's joint log-density by ``torch.func.vmap``);
    ``"sequential"``: Pyro's loop. ``max_plate_nesting`` is given, so Pyro guesses nothing (and
    logs nothing).

    Arguments:
        model, guide: the pair to fit.
        args, kwargs: their arguments.
        num_particles: ELBO particles.

    Returns:
        ``(model to pass to SVI, the loss, the path)``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> _, loss, path = elbo_particles(model, guide, (torch.zeros(3),), {}, 8)
        >>> path, loss.max_plate_nesting
        ('vectorized', 2)
    """
    nesting = plate_nesting(model, guide, args, kwargs)
    path = "vectorized"
    if num_particles > 1:
        path = choose_particle_path(
            model, guide, args, kwargs, num_particles, nesting, "retrain", "joint"
        )
    if path == "vmap":
        with preserved_rng(args, kwargs), torch.no_grad(), poutine.block():
            prototype = poutine.trace(model).get_trace(*args, **kwargs)
        model = VmappedModel(model, prototype, num_particles, -nesting - 1, "joint")
    loss = pyro.infer.Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=path != "sequential",
        max_plate_nesting=nesting,
    )
    return model, loss, path
