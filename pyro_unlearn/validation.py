"""Argument checks shared by every entry point: each raises before anything is changed, with a
message that names the argument and what is wrong with it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample

__all__ = [
    "check_bool",
    "check_finite",
    "check_finite_data",
    "check_in_unit_interval",
    "check_nonnegative",
    "check_nonnegative_int",
    "check_plate_shapes",
    "check_positive",
    "check_positive_int",
]


def _is_real(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` ≥ 1, or a ``ValueError``/``TypeError`` naming ``name``.

    Example:
        >>> check_positive_int("num_particles", 8)
        8
        >>> check_positive_int("num_particles", 2.5)
        Traceback (most recent call last):
        ...
        TypeError: num_particles must be a positive integer, got 2.5 (float)
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive integer, got {value!r} ({type(value).__name__})"
        )
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _real(name: str, value: Any, what: str) -> float:
    if not _is_real(value):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {what}, got {value}")
    return value


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0, or an error naming ``name``.

    Example:
        >>> check_positive("lr", 1e-3)
        0.001
        >>> check_positive("lr", float("nan"))
        Traceback (most recent call last):
        ...
        ValueError: lr must be a finite number > 0, got nan
    """
    value = _real(name, value, "a finite number > 0")
    if value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` ≥ 0, or an error naming ``name``.

    Example:
        >>> check_nonnegative("damping", 0)
        0.0
    """
    value = _real(name, value, "a finite number ≥ 0")
    if value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    return value


def check_in_unit_interval(
    name: str, value: Any, *, open_left: bool = False, open_right: bool = False
) -> float:
    """``value`` as a ``float`` in [0, 1] (open at 0 with ``open_left``, at 1 with
    ``open_right``), or an error naming ``name``.

    Example:
        >>> check_in_unit_interval("anneal", 0.5, open_left=True)
        0.5
        >>> check_in_unit_interval("step_size", 1.0, open_left=True, open_right=True)
        Traceback (most recent call last):
        ...
        ValueError: step_size must be a number in (0, 1), got 1.0
    """
    interval = ("(" if open_left else "[") + "0, 1" + (")" if open_right else "]")
    value = _real(name, value, f"a number in {interval}")
    above = 0 < value if open_left else 0 <= value
    below = value < 1 if open_right else value <= 1
    if not (above and below):
        raise ValueError(f"{name} must be a number in {interval}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False``, else a ``TypeError`` naming ``name``.

    Example:
        >>> check_bool("progress", "yes")
        Traceback (most recent call last):
        ...
        TypeError: progress must be True or False, got 'yes' (str)
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_finite(name: str, value: Any) -> None:
    """Raise a ``ValueError`` naming ``name`` and the first non-finite entry (its row, the index
    along the first dimension) if the tensor ``value`` holds NaN or ±inf; other values pass.

    Example:
        >>> check_finite("y", torch.tensor([0.0, float("nan"), 1.0]))
        Traceback (most recent call last):
        ...
        ValueError: y has a non-finite value (nan) at row 1: the data must be finite
    """
    if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.is_complex()):
        return
    bad = ~torch.isfinite(value)
    if not bool(bad.any()):
        return
    if value.dim() == 0:
        raise ValueError(f"{name} is not finite ({value.item()})")
    first = bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0, 0]
    entry = value[first].reshape(-1)[bad[first].reshape(-1)][0].item()
    raise ValueError(
        f"{name} has a non-finite value ({entry}) at row {int(first)}: the data must be finite"
    )


def check_finite_data(args: tuple, kwargs: Mapping[str, Any] | None = None) -> None:
    """:func:`check_finite` on every tensor among a model's ``*args`` and ``**kwargs`` (named
    ``args[i]`` or by keyword).

    Example:
        >>> check_finite_data((torch.zeros(2, 3), torch.ones(2)), {"y": torch.zeros(2)})
    """
    for i, value in enumerate(args):
        check_finite(f"args[{i}]", value)
    for key, value in (kwargs or {}).items():
        check_finite(key, value)


def check_nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` ≥ 0 (a seed, a count that may be zero), or an error naming
    ``name``.

    Example:
        >>> check_nonnegative_int("seed", 0)
        0
        >>> check_nonnegative_int("seed", -1)
        Traceback (most recent call last):
        ...
        ValueError: seed must be an integer ≥ 0, got -1
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer ≥ 0, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0, got {value}")
    return int(value)


def _batch_shape(name: str, site: dict, plates: dict[str, str]) -> torch.Size | None:
    """The batch shape of a sample site's log-density: its distribution's batch shape broadcast
    with its value's (an observation may add dims); a ``ValueError`` if they do not broadcast."""
    fn, value = site["fn"], site["value"]
    event = len(getattr(fn, "event_shape", ()))
    if not isinstance(value, torch.Tensor) or value.dim() < event:
        return None
    try:
        return torch.broadcast_shapes(fn.batch_shape, value.shape[: value.dim() - event])
    except AttributeError:
        return None
    except RuntimeError:
        raise ValueError(
            f"site {name!r} has a value of shape {tuple(value.shape)} that does not broadcast "
            f"with its distribution's batch shape {tuple(fn.batch_shape)} (event shape "
            f"{tuple(fn.event_shape)}), in plates {plates}: do the model's arguments have the "
            "same number of rows?"
        ) from None


def check_plate_shapes(trace: Trace) -> None:
    """Raise a ``ValueError`` naming the site, its batch shape and its plates if a sample site
    inside a vectorised ``pyro.plate`` has a batch dim of size > 1 that no plate declares (or
    declares at another size): an observation of shape ``(N, 1)`` scored by a distribution of
    batch shape ``(N,)`` is broadcast to ``(N, N)``, every row against every mean, silently.

    Pyro's own check (:func:`pyro.util.check_site_shape`) ignores the dims left of
    ``max_plate_nesting``, where such a broadcast lands; sites in no plate are not checked. A
    value that does not broadcast with its distribution (15 rows of ``y`` for 17 of ``x``) is a
    ``ValueError`` too: without a log-density computed, Pyro's validation never sees it.

    Arguments:
        trace: a model or guide trace, without a particle plate (or with it: it is a plate).

    Raises:
        ValueError: naming the first such site, its batch shape, its value's shape and its
            plates.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("y", dist.Normal(torch.zeros(3), 1.0), obs=y)
        >>> check_plate_shapes(pyro.poutine.trace(model).get_trace(torch.zeros(3, 1)))
        Traceback (most recent call last):
        ...
        ValueError: site 'y' has batch shape (3, 3) (its distribution's (3,), its value's ...
    """
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        frames = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized}
        plates = {f.name: f"dim {d}, size {f.size}" for d, f in sorted(frames.items())}
        batch = _batch_shape(name, site, plates) if frames else None
        if batch is None:
            continue
        for dim in range(-len(batch), 0):
            frame = frames.get(dim)
            if batch[dim] == 1 or (frame is not None and frame.size == batch[dim]):
                continue
            where = "is in no plate" if frame is None else f"is not plate {frame.name!r}'s size"
            raise ValueError(
                f"site {name!r} has batch shape {tuple(batch)} (its distribution's "
                f"{tuple(site['fn'].batch_shape)}, its value's shape "
                f"{tuple(site['value'].shape)}), but its plates declare only {plates}: dim "
                f"{dim} of size {batch[dim]} {where}, so the site is broadcast across it; give "
                "the value the plate's shape (e.g. y.squeeze(-1) or y.reshape(-1)), or declare "
                "the dim (.to_event(1), or another pyro.plate)"
            )
