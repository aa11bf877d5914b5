"""Per-particle log densities and plate facts read off Pyro traces."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

__all__ = [
    "latent_sites",
    "max_plate_nesting",
    "particle_dim_of",
    "preserved_rng",
    "subsampled_plates",
    "sum_per_particle",
    "sum_sites_per_particle",
]


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
