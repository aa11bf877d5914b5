"""The frozen posterior q(θ|D): an immutable snapshot of a trained guide.

Pyro keeps a guide's parameters in the global param store, and ``copy.deepcopy`` of an
AutoGuide is *not* independent (its params rebind to the live guide's on the next call). The
frozen posterior therefore keeps its own parameter tensors (``requires_grad=False``, from an
independent deep copy) in a :class:`~pyro_unlearn.params.ParamSnapshot` and runs the guide with
that snapshot as the param store and its parameters hidden, so neither later training of the
live guide nor an SVI step can change it.
"""

from .copying import independent_copy
from .frozen import FrozenPosterior, freeze

__all__ = ["FrozenPosterior", "freeze", "independent_copy"]
