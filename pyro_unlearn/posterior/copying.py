"""Independent deep copies of PyroModule guides, sharing no tensor with the original."""

from __future__ import annotations

import copy
import types
from typing import Any

import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from torch.distributions.transforms import Transform

__all__ = ["independent_copy"]


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


_OPAQUE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType)


def _non_leaf_tensors(guide: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Every non-leaf tensor a deepcopy of ``guide`` would meet, by id: an AutoGuide's prototype
    trace holds the model's values, and a model's ``pyro.param`` (an empirical-Bayes prior scale)
    is a non-leaf tensor there (its constrained value) and in the distributions built from it."""
    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    stack: list[Any] = []
    for m in guide.modules():
        skip = {"_parameters", "_buffers", "_modules"}
        if isinstance(m, AutoGuide):
            skip |= {"_model", "master"}  # AutoGuide.__getstate__ drops both from the copy
        stack.extend(v for k, v in vars(m).items() if k not in skip)
    while stack:
        value = stack.pop()
        if id(value) in seen or isinstance(value, _OPAQUE):
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if not value.is_leaf:
                found[id(value)] = value
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            stack.extend(vars(value).values())
    return found


def independent_copy(guide: PyroModule) -> PyroModule:
    r"""A deep copy of a PyroModule guide that shares nothing with it, not even param-store names'
    tensors: run it against a private store (``ParamSnapshot().register(copy, *args)``) and it
    registers its own copies.

    ``AutoGuide.__getstate__`` sets ``_model`` and ``master`` to None on the *original* during a
    deepcopy; both are given back (and the copy gets the same model reference). Tensors that
    ``copy.deepcopy`` refuses (non-leaf tensors: the values a model's own ``pyro.param``, e.g. an
    empirical-Bayes prior scale, left in an AutoGuide's prototype trace) are copied detached: the
    copy keeps their values, never a graph into the model's parameters.

    Arguments:
        guide: a PyroModule guide (an AutoGuide, or a module holding plain ``nn.Module``\ s).

    Returns:
        The copy, bound to the same model.

    Raises:
        TypeError: when the guide cannot be deep-copied.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_unlearn.params import ParamSnapshot
        >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)))
        >>> _ = guide()
        >>> copied = independent_copy(guide)
        >>> store = ParamSnapshot()
        >>> _ = store.register(copied)
        >>> _ = store["AutoNormal.locs.mu"].data.fill_(3.0)  # the copy's, not the guide's
        >>> pyro.param("AutoNormal.locs.mu").item(), copied.locs.mu.item()
        (0.0, 3.0)
    """
    _clear_transform_caches(guide)
    refs = {m: (m._model, m.master) for m in guide.modules() if isinstance(m, AutoGuide)}
    memo: dict[int, Any] = {k: t.detach().clone() for k, t in _non_leaf_tensors(guide).items()}
    try:
        copied = copy.deepcopy(guide, memo)
    except RuntimeError as e:
        raise TypeError(f"cannot copy {type(guide).__name__}: deepcopy failed ({e})") from e
    finally:
        for m, (model_ref, master) in refs.items():
            m._model, m.master = model_ref, master
    for m, c in zip(guide.modules(), copied.modules(), strict=True):
        if m in refs:
            c._model = refs[m][0]
    return copied
