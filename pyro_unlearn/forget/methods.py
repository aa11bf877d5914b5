"""The losses forget runs, by name, and the options it passes on to them."""

from __future__ import annotations

import inspect

from ..infer import ReverseKL, Trace_EUBO, UnlearningLoss

__all__ = ["METHODS", "SET_BY_FORGET", "loss_option_names"]

#: The losses :func:`~pyro_unlearn.forget` runs, by the name its ``method`` argument takes.
METHODS: dict[str, type[UnlearningLoss]] = {"eubo": Trace_EUBO, "rkl": ReverseKL}

#: Arguments of the loss that forget sets from its own arguments.
SET_BY_FORGET = {"posterior", "lam", "num_particles", "vectorize_particles", "max_plate_nesting"}


def loss_option_names(loss_cls: type[UnlearningLoss]) -> set[str]:
    """The keyword arguments of an unlearning loss that :func:`~pyro_unlearn.forget` passes on
    through its ``loss_options`` (those it does not set itself).

    Arguments:
        loss_cls: a subclass of :class:`~pyro_unlearn.infer.UnlearningLoss`.

    Returns:
        The option names.

    Example:
        >>> sorted(loss_option_names(ReverseKL))
        ['anneal', 'proposal', 'retain_graph']
    """
    names: set[str] = set()
    for cls in loss_cls.__mro__:
        if "__init__" in vars(cls) and issubclass(cls, UnlearningLoss):
            names |= {
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            }
    return names - SET_BY_FORGET - {"self"}
