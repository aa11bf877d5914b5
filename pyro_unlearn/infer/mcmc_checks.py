"""The options and draws of :func:`~pyro_unlearn.mcmc_unlearn`, checked before anything runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..validation import (
    check_finite,
    check_in_unit_interval,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
)
from .base import INDEPENDENT_LIKELIHOOD

__all__ = [
    "MIN_DRAWS",
    "RESAMPLING",
    "VECTORIZE",
    "RejuvenationOptions",
    "check_enough_draws",
    "check_likelihood_depends",
    "check_options",
    "flatten_samples",
    "rejuvenation_options",
    "resolve_generator",
]

#: The resampling schemes of :func:`~pyro_unlearn.mcmc_unlearn`'s ``resample``.
RESAMPLING = ("systematic", "multinomial")
#: How :func:`~pyro_unlearn.mcmc_unlearn` batches the model over draws (``vectorize``).
VECTORIZE = ("vmap", "plate")
#: The fewest draws :func:`~pyro_unlearn.mcmc_unlearn` reweights (one draw has weight 1 whatever
#: D_e). With ``ess_threshold`` t > 0 it also needs more than 1/t draws: ESS ≥ 1, so with
#: S ≤ 1/t draws ESS/S ≥ t always and a collapse of the weights could not be detected.
MIN_DRAWS = 2
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


@dataclass
class RejuvenationOptions:
    """The HMC rejuvenation of :func:`~pyro_unlearn.mcmc_unlearn`, from its ``rejuvenate`` dict.

    Attributes:
        num_moves: HMC moves per particle.
        args, kwargs: the model's arguments for D_r (``None``: the model's own without D_e).
        step_size: initial leapfrog step in the whitened space (``None``: 0.8 P^(-1/4)).
        trajectory_length: leapfrog steps × step size.
        max_leapfrog: cap on leapfrog steps per move.
        target_accept: acceptance rate the step size is adapted to, in (0, 1).
        mass_matrix: "dense", "diagonal" or ``None`` (dense up to 200 latents).
    """

    num_moves: int = 5
    args: tuple | None = None
    kwargs: dict | None = None
    step_size: float | None = None
    trajectory_length: float = math.pi / 2
    max_leapfrog: int = 64
    target_accept: float = 0.8
    mass_matrix: str | None = None


def check_options(
    resample: Any,
    vectorize: Any,
    ess_threshold: Any,
    chunk_size: Any,
    num_samples: Any,
    seed: Any,
    generator: Any,
) -> tuple[float, int, int | None, int | None]:
    """Check the options of :func:`~pyro_unlearn.mcmc_unlearn` (types and ranges).

    Arguments:
        resample, vectorize, ess_threshold, chunk_size, num_samples, seed, generator: as passed
            to :func:`~pyro_unlearn.mcmc_unlearn`.

    Returns:
        ``(ess_threshold, chunk_size, num_samples, seed)`` as float and ints.

    Raises:
        ValueError, TypeError: naming the first option out of range or of the wrong type.

    Example:
        >>> check_options("systematic", "vmap", 0.1, 1024, None, 0, None)
        (0.1, 1024, None, 0)
    """
    if resample not in (None, *RESAMPLING):
        raise ValueError(f"resample must be one of {RESAMPLING} or None, got {resample!r}")
    if vectorize not in VECTORIZE:
        raise ValueError(f"vectorize must be one of {VECTORIZE}, got {vectorize!r}")
    ess_threshold = check_in_unit_interval("ess_threshold", ess_threshold)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if num_samples is not None:
        num_samples = check_positive_int("num_samples", num_samples)
    if seed is not None:
        seed = check_nonnegative_int("seed", seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    return ess_threshold, chunk_size, num_samples, seed


def rejuvenation_options(rejuvenate: Any, erased: Any) -> RejuvenationOptions | None:
    """Read and check ``rejuvenate`` (``None``/``False``, ``True`` or a dict of
    :class:`RejuvenationOptions`' fields), D_r included.

    Arguments:
        rejuvenate: as passed to :func:`~pyro_unlearn.mcmc_unlearn`.
        erased: its ``erased``: without it and without D_r there is no HMC target.

    Returns:
        the options, or ``None`` for no rejuvenation.

    Raises:
        ValueError, TypeError: for an unknown key, a value out of range or non-finite D_r.

    Example:
        >>> rejuvenation_options({"num_moves": 2}, erased=[0]).num_moves
        2
    """
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
    config = RejuvenationOptions(**rejuvenate)
    config.num_moves = check_positive_int("rejuvenate['num_moves']", config.num_moves)
    config.max_leapfrog = check_positive_int("rejuvenate['max_leapfrog']", config.max_leapfrog)
    config.trajectory_length = check_positive(
        "rejuvenate['trajectory_length']", config.trajectory_length
    )
    if config.step_size is not None:
        config.step_size = check_positive("rejuvenate['step_size']", config.step_size)
    config.target_accept = check_in_unit_interval(
        "rejuvenate['target_accept']", config.target_accept
    )
    if not 0.0 < config.target_accept < 1.0:
        raise ValueError(
            f"rejuvenate['target_accept'] must be in (0, 1), got {config.target_accept}"
        )
    if config.mass_matrix not in (None, "dense", "diagonal"):
        raise ValueError(
            f"rejuvenate['mass_matrix'] must be 'dense' or 'diagonal', got {config.mass_matrix!r}"
        )
    _check_remaining_data(config)
    if config.args is None and config.kwargs is None and erased is None:
        raise ValueError(
            "rejuvenation targets p(θ|D_r), but with erased=None the model's arguments are D_e "
            "alone: pass D_r as rejuvenate={'args': (...), 'kwargs': {...}}"
        )
    return config


def _check_remaining_data(config: RejuvenationOptions) -> None:
    """D_r of the HMC target: a tuple of arguments and a dict of keyword arguments, finite."""
    if config.args is not None:
        if not isinstance(config.args, tuple | list):
            raise TypeError(
                "rejuvenate['args'] must be a tuple of the model's positional arguments for D_r, "
                f"got {type(config.args).__name__}"
            )
        for i, value in enumerate(config.args):
            check_finite(f"rejuvenate['args'][{i}]", value)
    if config.kwargs is not None:
        if not isinstance(config.kwargs, Mapping):
            raise TypeError(
                "rejuvenate['kwargs'] must be a dict of the model's keyword arguments for D_r, "
                f"got {type(config.kwargs).__name__}"
            )
        for key, value in config.kwargs.items():
            check_finite(f"rejuvenate['kwargs'][{key!r}]", value)


def flatten_samples(samples: Any) -> dict[str, torch.Tensor]:
    """site → (S, ...) from an MCMC object, an InferenceData (chains flattened) or a dict.

    Arguments:
        samples: as passed to :func:`~pyro_unlearn.mcmc_unlearn`.

    Returns:
        site → tensor of draws along dim 0 (a dict's values detached, never copied).

    Raises:
        ValueError, TypeError: for another type, no sites, sites with different numbers of
            draws, no draws, or a draw that is not finite (named by site and index).

    Example:
        >>> flatten_samples({"theta": [[0.0], [1.0]]})["theta"].shape
        torch.Size([2, 1])
    """
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
    for name, value in draws.items():
        _check_finite_draws(name, value)
    return draws


def _check_finite_draws(name: str, value: torch.Tensor) -> None:
    """Raise a ValueError naming the site, how many draws are not finite and the first one."""
    if not (value.is_floating_point() or value.is_complex()):
        return
    bad = ~torch.isfinite(value.reshape(len(value), -1)).all(-1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        entry = value[first].reshape(-1)[~torch.isfinite(value[first].reshape(-1))][0].item()
        raise ValueError(
            f"samples[{name!r}] is not finite for {int(bad.sum())} of {len(value)} draws "
            f"(first: draw {first}, value {entry}): the draws are corrupt; drop them or rerun "
            "MCMC"
        )


def check_enough_draws(draws: dict[str, torch.Tensor], ess_threshold: float) -> None:
    """Raise a ValueError unless there are at least :data:`MIN_DRAWS` draws, and more than
    1/``ess_threshold`` when it is positive (else the ESS check could never fail).

    Example:
        >>> check_enough_draws({"theta": torch.zeros(10)}, 0.1)
        Traceback (most recent call last):
        ...
        ValueError: samples hold 10 draws, too few to reweight meaningfully: ...
    """
    num = len(next(iter(draws.values())))
    if num < MIN_DRAWS:
        raise ValueError(
            f"samples hold {num} draw(s), fewer than MIN_DRAWS = {MIN_DRAWS}: one draw cannot be "
            "reweighted; draw more samples of p(θ|D)"
        )
    if ess_threshold > 0 and num * ess_threshold <= 1:
        raise ValueError(
            f"samples hold {num} draws, too few to reweight meaningfully: with ess_threshold = "
            f"{ess_threshold:g}, ESS/S ≥ 1/S ≥ ess_threshold whatever the weights, so their "
            f"collapse could not be detected. Draw more than 1/ess_threshold = "
            f"{1 / ess_threshold:g} samples, or pass ess_threshold=0 to reweight them anyway"
        )


def resolve_generator(
    draws: dict[str, torch.Tensor], seed: int | None, generator: torch.Generator | None
) -> torch.Generator | None:
    """The generator of resampling and HMC: one seeded with ``seed`` on the draws' device, or
    ``generator`` after checking that it is on that device's type."""
    device = next(iter(draws.values())).device
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"the generator is on {generator.device}, the draws on {device}")
    return generator


def check_likelihood_depends(draws: Mapping[str, torch.Tensor], log_lik: torch.Tensor) -> None:
    """Raise a ``ValueError`` if log p(D_e|θ_s) is the same at every draw although the draws
    differ: a likelihood that does not depend on the latents (reweighting would leave p(θ|D)
    as it is, ESS = S).

    Arguments:
        draws: site → draws along dim 0.
        log_lik: log p(D_e|θ_s) per draw, ``(S,)``.

    Example:
        >>> draws = {"theta": torch.tensor([0.0, 1.0])}
        >>> check_likelihood_depends(draws, torch.tensor([-2.0, -2.0]))
        Traceback (most recent call last):
        ...
        ValueError: log p(D_e|θ_s) is -2 at all 2 draws, which differ: the erased observations' ...
    """
    if log_lik.numel() < 2 or bool((log_lik != log_lik[0]).any()):
        return
    distinct = any(bool((v != v[:1]).any()) for v in draws.values() if v.dim() and len(v) > 1)
    if distinct:
        raise ValueError(
            f"log p(D_e|θ_s) is {float(log_lik[0]):.6g} at all {log_lik.numel()} draws, which "
            f"differ: {INDEPENDENT_LIKELIHOOD}"
        )
