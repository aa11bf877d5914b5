"""Per-particle log densities and plate facts read off Pyro traces."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

__all__ = [
    "PARTICLE_PATHS",
    "latent_sites",
    "max_plate_nesting",
    "particle_dim_of",
    "particle_value",
    "preserved_rng",
    "replay_values",
    "subsampled_plates",
    "sum_per_particle",
    "sum_sites_per_particle",
    "vectorization_problem",
]

#: How particles are drawn: in one ``pyro.plate`` (``"vectorized"``), by ``torch.func.vmap``
#: over the model (``"vmap"``: the guide in the plate, the model batched), or one at a time.
PARTICLE_PATHS = ("vectorized", "vmap", "sequential")


def latent_sites(trace: Trace) -> list[str]:
    """Names of the sites a guide is scored on.

    Arguments:
        trace: a guide trace.

    Returns:
        Its auxiliary (unconstrained) sites when it has any (every AutoGuide), otherwise all of
        its latent sample sites (a plain guide function), in trace order.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)))
        >>> latent_sites(pyro.poutine.trace(guide).get_trace())
        ['mu_unconstrained']
    """
    latent = [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
    auxiliary = [name for name in latent if trace.nodes[name]["infer"].get("is_auxiliary")]
    return auxiliary or latent


def subsampled_plates(trace: Trace) -> list[str]:
    """Names of the plates that subsample in ``trace`` (size below full size), sorted.

    Arguments:
        trace: a model trace.

    Returns:
        The plate names, sorted.
    """
    return sorted(
        {
            frame.name
            for site in trace.nodes.values()
            if site["type"] == "sample"
            for frame in site["cond_indep_stack"]
            if frame.full_size is not None and frame.size != frame.full_size
        }
    )


def max_plate_nesting(trace: Trace) -> int:
    """How many batch dims the vectorised plates of a trace's sample sites use (Pyro's count).

    Arguments:
        trace: a model or guide trace.

    Returns:
        ``-min(frame.dim)`` over the vectorised plates, 0 without any.
    """
    dims = [
        frame.dim
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def particle_dim_of(num_particles: int, vectorize: bool, max_plate_nesting: float) -> int | None:
    """The batch dim that indexes particles, as Pyro's ``ELBO`` places the particle plate.

    Arguments:
        num_particles: particles per step.
        vectorize: whether they are vectorised.
        max_plate_nesting: the loss's ``max_plate_nesting`` (the particle plate included).

    Returns:
        ``-max_plate_nesting``, or ``None`` when particles are not vectorised (or only one).

    Example:
        >>> particle_dim_of(8, True, 2), particle_dim_of(8, False, 2)
        (-2, None)
    """
    if not vectorize or num_particles == 1:
        return None
    return -int(max_plate_nesting)


def sum_per_particle(
    log_prob: torch.Tensor, particle_dim: int | None, num_particles: int
) -> torch.Tensor:
    """Sum a site's ``log_prob`` over every batch dim but the particle dim.

    Arguments:
        log_prob: a site's ``log_prob``.
        particle_dim: the batch dim that indexes particles, or ``None``.
        num_particles: how many particles that dim holds.

    Returns:
        A tensor of shape ``(num_particles,)`` (``(1,)`` when ``particle_dim`` is ``None``); a
        ``log_prob`` without the particle dim is constant across particles.

    Example:
        >>> sum_per_particle(torch.ones(3, 4), -2, 3)  # dims (particles, data)
        tensor([4., 4., 4.])
    """
    if particle_dim is None:
        return log_prob.sum().reshape(1)
    if log_prob.dim() < -particle_dim:  # constant across particles
        return log_prob.sum().expand(num_particles)
    k = log_prob.dim() + particle_dim
    if log_prob.dim() > k + 1:
        log_prob = log_prob.sum(dim=tuple(range(k + 1, log_prob.dim())))
    if k > 0:
        log_prob = log_prob.sum(dim=tuple(range(k)))
    return log_prob.expand(num_particles)


def sum_sites_per_particle(
    trace: Trace, names: Iterable[str], particle_dim: int | None, num_particles: int
) -> torch.Tensor:
    """Sum the ``log_prob`` of the named sites per particle.

    Arguments:
        trace: a trace on which ``compute_log_prob`` has run (for the named sites at least).
        names: the sites to sum.
        particle_dim: the batch dim that indexes particles, or ``None``.
        num_particles: how many particles that dim holds.

    Returns:
        A tensor of shape ``(num_particles,)`` (``(1,)`` when ``particle_dim`` is ``None``).

    Raises:
        ValueError: when ``names`` is empty.
    """
    total = None
    for name in names:
        term = sum_per_particle(trace.nodes[name]["log_prob"], particle_dim, num_particles)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no sample sites to score in this trace")
    return total


@contextlib.contextmanager
def preserved_rng(*values: Any) -> Iterator[None]:
    """Run a probe (a dry run of a model or guide, which draws from its distributions) without
    moving the random number generators: the CPU's and those of the CUDA devices that the
    tensors among ``values`` (and in dicts or sequences of them) live on, so a seeded run draws
    the same numbers with or without the probe.

    Arguments:
        values: the probe's arguments, to find the devices it may draw on.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> with preserved_rng():
        ...     _ = torch.randn(3)
        >>> float(torch.randn(())) == float(torch.manual_seed(0) and torch.randn(()))
        True
    """
    devices: set[int] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.device.type == "cuda":
                devices.add(value.device.index or 0)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices.add(torch.cuda.current_device())
    with torch.random.fork_rng(devices=sorted(devices)):
        yield


def particle_value(
    value: torch.Tensor, particle_dim: int, event_dim: int, index: int, shape: torch.Size
) -> torch.Tensor:
    """One particle's value of a site traced inside a particle plate, in its unbatched shape.

    Arguments:
        value: the site's value in the vectorised trace.
        particle_dim: the (negative) batch dim of the particle plate.
        event_dim: the site's event dims.
        index: the particle.
        shape: the value's shape in a trace without the particle plate.

    Returns:
        A tensor of ``shape`` (a value without the particle dim is the same for every particle).

    Example:
        >>> particle_value(torch.arange(6.0).reshape(3, 1, 2), -2, 1, 2, torch.Size([2]))
        tensor([4., 5.])
    """
    k = value.dim() - event_dim + particle_dim
    if k >= 0:
        value = value.select(k, index if value.shape[k] > 1 else 0)
    return value.reshape(shape)


def replay_values(values: dict[str, torch.Tensor]) -> Trace:
    """A trace holding ``values`` as latent sample sites, for ``poutine.replay``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> model = lambda: pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> float(pyro.poutine.replay(model, trace=replay_values({"mu": torch.tensor(2.0)}))())
        2.0
    """
    trace = Trace()
    for name, value in values.items():
        trace.add_node(name, type="sample", value=value, is_observed=False, infer={}, fn=None)
    return trace


def vectorization_problem(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int | None = None,
) -> str | None:
    """Why ``model`` cannot take a particle plate left of its own plates, or ``None`` if it can.

    Runs the guide and the model (replayed on it) once in a ``pyro.plate`` of ``num_particles``
    and once without; the model is refused when the vectorised run raises where the other does
    not (e.g. a
    ``PyroModule[nn.Linear]`` whose ``F.linear`` takes 2-D weights only), when an observed
    site's log-density has no particle dim of ``num_particles`` (broadcast across particles), or
    when the first and last particles' log-densities differ from the model replayed on their
    values without the plate (particles mixed). Nothing reaches an enclosing handler, no
    gradient is recorded, and the random state is left as it was.

    Arguments:
        model: the model (as the loss runs it, e.g. wrapped by :func:`~pyro_unlearn.unlearn`).
        guide: a guide of it (drawing its latent sites).
        args, kwargs: the model's and guide's arguments.
        num_particles: the particle plate's size (≥ 2).
        nesting: the model's own plate nesting (default: read off the traces).

    Returns:
        A one-line reason, or ``None`` when the vectorised particles are the model's.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = pyro.infer.autoguide.AutoNormal(model)
        >>> vectorization_problem(model, guide, (torch.zeros(3),), {}, 4) is None
        True
        >>> def flat(y):  # mu.reshape(-1)[:1]: every particle reads the first one's mu
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu.reshape(-1)[:1], 1.0), obs=y)
        >>> vectorization_problem(flat, guide, (torch.zeros(3),), {}, 4)  # doctest: +ELLIPSIS
        "particle 3's log-density at observed site 'y' is ... in the particle plate but ..."
    """
    with preserved_rng(args, kwargs), torch.no_grad(), poutine.block():
        guide_once = poutine.trace(guide).get_trace(*args, **kwargs)
        model_once = poutine.trace(poutine.replay(model, trace=guide_once)).get_trace(
            *args, **kwargs
        )
        try:
            model_once.compute_log_prob(site_filter=lambda _, site: site["is_observed"])
        except Exception:  # noqa: BLE001 - the model fails without the plate too: its own error
            return None
        if nesting is None:
            nesting = max(max_plate_nesting(guide_once), max_plate_nesting(model_once))
        dim = -nesting - 1
        particles = pyro.plate("_vectorization_probe", num_particles, dim=dim)
        try:
            guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
            model_trace = poutine.trace(
                poutine.replay(particles(model), trace=guide_trace)
            ).get_trace(*args, **kwargs)
            model_trace.compute_log_prob(site_filter=lambda _, site: site["is_observed"])
        except Exception as error:  # noqa: BLE001 - the model's own error, whatever it is
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            return f"the vectorised trace raised {type(error).__name__}: {first_line}"
        return _misshaped(model_trace, dim, num_particles) or _mixed(
            model, model_once, model_trace, dim, num_particles, args, kwargs
        )


def _observed(trace: Trace) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
    ]


def _misshaped(trace: Trace, dim: int, num_particles: int) -> str | None:
    """An observed site whose log-density lacks the particle dim (broadcast across particles)."""
    for name in _observed(trace):
        log_prob = trace.nodes[name]["log_prob"]
        if log_prob.dim() < -dim or log_prob.shape[dim] != num_particles:
            return (
                f"observed site {name!r} has log-density of shape {tuple(log_prob.shape)}: no "
                f"particle dim of size {num_particles} at dim {dim}"
            )
    return None


def _unscaled(site: dict) -> torch.Tensor:
    """A site's log-density, masked but not scaled (Pyro's ``unscaled_log_prob``)."""
    return scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])


def _mixed(model, model_once, model_trace, dim, num_particles, args, kwargs) -> str | None:
    """The first and last particles' log-densities against the model replayed without the
    plate on their values: particles mixed by the model (a reshape, a sum over dims) differ."""
    for index in (0, num_particles - 1):
        values = {}
        for name, site in model_once.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            vectorised = model_trace.nodes[name]
            event_dim = 0 if site_is_subsample(site) else vectorised["fn"].event_dim
            values[name] = (
                vectorised["value"]
                if site_is_subsample(site)
                else particle_value(vectorised["value"], dim, event_dim, index, site["value"].shape)
            )
        single = poutine.trace(poutine.replay(model, trace=replay_values(values))).get_trace(
            *args, **kwargs
        )
        single.compute_log_prob(site_filter=lambda _, site: site["is_observed"])
        for name in _observed(single):  # unscaled: a replayed subsample may rescale its plate
            ours = _unscaled(single.nodes[name]).sum()
            theirs = _unscaled(model_trace.nodes[name])
            k = theirs.dim() + dim
            theirs = theirs.select(k, index).sum()
            if not torch.isclose(ours, theirs, rtol=1e-4, atol=1e-3 + 1e-5 * float(ours.abs())):
                return (
                    f"particle {index}'s log-density at observed site {name!r} is "
                    f"{float(theirs):.6g} in the particle plate but {float(ours):.6g} without it"
                )
    return None
