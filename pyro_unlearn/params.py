"""Snapshots of a guide's parameters, restored bit for bit, and code run against a private store."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import constraints

from .traces import preserved_rng

__all__ = ["ParamSnapshot", "guide_tensors", "trainable"]

_REAL = constraints.real


class ParamSnapshot(Mapping[str, torch.Tensor]):
    """A guide's parameters as Pyro's param store holds them, kept outside that store.

    A mapping from param-store name to the *unconstrained* tensor, with each name's constraint.
    It is the one place that reads or swaps the param store's internals, so the rest of the
    package (and its users) can:

    * :meth:`take` the parameters a guide reads: detached copies, unaffected by later training;
    * :meth:`restore` them into the live param store, bit for bit and in place (a guide or an
      optimiser that holds the live tensors stays bound to them);
    * run code :meth:`active`: inside, the global param store *is* the snapshot, so the code
      reads its tensors and whatever it registers lands in the snapshot, not in the live store.

    :meth:`copy` gives another snapshot of the same tensors, :meth:`clone` one of new tensors.

    Arguments:
        params: unconstrained tensors by param-store name (held, not copied).
        constraints: their constraints; a name without one is unconstrained (``real``).

    Example:
        >>> import pyro, torch
        >>> def guide():
        ...     return pyro.param("loc", torch.tensor(1.0))
        >>> pyro.clear_param_store()
        >>> _ = guide()
        >>> snapshot = ParamSnapshot.take(guide)
        >>> with torch.no_grad():
        ...     _ = pyro.param("loc").add_(5.0)  # a training step that went wrong
        >>> snapshot.restore()
        >>> pyro.param("loc").item()
        1.0
        >>> with ParamSnapshot().active():  # a private, empty store
        ...     pyro.param("loc", torch.tensor(-3.0)).item()
        -3.0
        >>> pyro.param("loc").item()  # the live store never saw it
        1.0
    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor] | None = None,
        constraints: Mapping[str, constraints.Constraint] | None = None,
    ) -> None:
        given = dict(constraints or {})
        self._params: dict[str, torch.Tensor] = dict(params or {})
        self._constraints = {n: given.get(n, _REAL) for n in self._params}
        self._names = {value: name for name, value in self._params.items()}

    # -- the mapping ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"ParamSnapshot({list(self._params)})"

    def constraint(self, name: str) -> constraints.Constraint:
        """The constraint of parameter ``name`` (its tensor is unconstrained)."""
        return self._constraints[name]

    # -- building snapshots ---------------------------------------------------------------------
    @classmethod
    def of_store(cls, exclude: Iterable[str] = (), *, clone: bool = True) -> ParamSnapshot:
        """The live param store's entries, except ``exclude``.

        Arguments:
            exclude: names to leave out.
            clone: detached copies (the default) or, with ``False``, the live tensors themselves:
                a private store that reads the live values but keeps what is registered or
                replaced in it to itself.

        Returns:
            A new :class:`ParamSnapshot`.
        """
        store, skip = pyro.get_param_store(), set(exclude)
        params = {n: v for n, v in store._params.items() if n not in skip}
        snapshot = cls(params, {n: store._constraints[n] for n in params})
        return snapshot.clone() if clone else snapshot

    @classmethod
    def take(cls, guide: Callable, *args, **kwargs) -> ParamSnapshot:
        """Detached copies of the parameters ``guide`` reads, in the order it reads them.

        The guide runs once (parameters only) against a private copy of the live store: a
        parameter it has not registered yet is taken at the initial value it would register,
        and the live store is left exactly as it was.

        Arguments:
            guide: a guide (any callable that uses ``pyro.param`` or is a ``PyroModule``).
            *args, **kwargs: the guide's arguments.

        Returns:
            A new :class:`ParamSnapshot`, independent of later changes to the param store.
        """
        private = cls.of_store(clone=False)
        names = private.register(guide, *args, **kwargs)
        return private.select(names).clone()

    def register(self, guide: Callable, *args, **kwargs) -> list[str]:
        """Run ``guide`` once (parameters only, effects blocked) with this snapshot as the param
        store; what it registers is added to the snapshot.

        Returns:
            The names of the parameters the guide read, in the order it read them.
        """
        with self.active(), poutine.block():
            trace = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
        return [name for name, site in trace.nodes.items() if site["type"] == "param"]

    def select(self, names: Iterable[str]) -> ParamSnapshot:
        """The entries ``names`` (the same tensors), in that order."""
        names = list(names)
        return ParamSnapshot({n: self._params[n] for n in names}, self._constraints)

    def copy(self) -> ParamSnapshot:
        """Another snapshot of the same tensors; what is registered in one stays out of the
        other."""
        return self.select(self._params)

    def clone(self, *, requires_grad: bool = False) -> ParamSnapshot:
        """A snapshot of detached copies of the tensors (leaves that require grad, if asked)."""
        params = {
            n: v.detach().clone().requires_grad_(requires_grad) for n, v in self._params.items()
        }
        return ParamSnapshot(params, self._constraints)

    def update(self, other: ParamSnapshot) -> None:
        """Add (or replace) ``other``'s entries, tensors and constraints, in this snapshot."""
        for name, value in other.items():
            old = self._params.get(name)
            if old is not None:
                self._names.pop(old, None)
            self._params[name] = value
            self._constraints[name] = other.constraint(name)
            self._names[value] = name

    # -- using snapshots ------------------------------------------------------------------------
    def restore(self) -> None:
        """Write the snapshot into the live param store, bit for bit.

        An entry the store holds is overwritten in place (its tensor keeps its identity, so a
        guide or an optimiser bound to it stays bound); an entry it lacks is added as a new leaf
        tensor that requires grad. Other entries of the store are left alone.

        Raises:
            ValueError: when a live entry's shape differs from the snapshot's.
        """
        store = pyro.get_param_store()
        for name, value in self._params.items():
            live = store._params.get(name)
            if live is not None and live.shape != value.shape:
                raise ValueError(
                    f"cannot restore {name!r}: the snapshot's shape is {tuple(value.shape)}, "
                    f"the param store's {tuple(live.shape)}"
                )
        with torch.no_grad():
            for name, value in self._params.items():
                live = store._params.get(name)
                if live is None:
                    live = value.detach().clone().requires_grad_(True)
                    store._params[name], store._param_to_name[live] = live, name
                else:
                    live.copy_(value)
                store._constraints[name] = self._constraints[name]

    @classmethod
    @contextlib.contextmanager
    def transaction(cls) -> Iterator[ParamSnapshot]:
        """All or nothing for the live param store: if the block raises, every entry the store
        held is written back bit for bit (in place, as :meth:`restore`), entries registered
        inside are removed, and the exception propagates.

        Yields:
            The snapshot taken on entry (detached copies of the whole store).

        Example:
            >>> import pyro, torch
            >>> pyro.clear_param_store()
            >>> _ = pyro.param("loc", torch.tensor(1.0))
            >>> try:
            ...     with ParamSnapshot.transaction():
            ...         _ = pyro.param("loc").data.fill_(float("nan"))  # a step that diverged
            ...         _ = pyro.param("new", torch.tensor(2.0))
            ...         raise ValueError("diverged")
            ... except ValueError:
            ...     pass
            >>> pyro.param("loc").item(), "new" in pyro.get_param_store()
            (1.0, False)
        """
        saved = cls.of_store()
        try:
            yield saved
        except BaseException:
            store = pyro.get_param_store()
            for name in [n for n in store._params if n not in saved._params]:
                del store[name]
            saved.restore()
            raise

    @contextlib.contextmanager
    def active(self) -> Iterator[ParamSnapshot]:
        """Inside, the global param store holds exactly this snapshot's tensors; the live store
        is back, untouched, on exit.

        What the code registers with ``pyro.param`` (or a ``PyroModule``'s first call) is added
        to the snapshot, so ``with ParamSnapshot().active():`` runs code against a fresh, empty
        store. The tensors are not copied: an optimiser inside changes them.

        Yields:
            This snapshot.
        """
        # Not ``ParamStoreDict.scope()``: its ``get_state()`` strips the ``.unconstrained``
        # weakref from live tensors whose constraint is ``real`` (the constrained value *is* that
        # tensor), which breaks a surrounding ``SVI.step``. Swapping the store's three dicts is
        # O(1) and touches nothing.
        store = pyro.get_param_store()
        saved = store._params, store._constraints, store._param_to_name
        store._params, store._constraints = self._params, self._constraints
        store._param_to_name = self._names
        try:
            yield self
        finally:
            store._params, store._constraints, store._param_to_name = saved


def guide_tensors(guide: Callable, *args, **kwargs) -> list[torch.Tensor]:
    """The tensors an optimiser trains when ``guide`` is trained: the unconstrained param-store
    tensors of the parameters it reads and, for an ``nn.Module`` guide, its own parameters (a
    plain ``nn.Module`` child whose gradients are off is not registered by ``pyro.module``, so
    the store alone would miss it).

    The guide runs once (parameters only, without gradients) against a private view of the live
    param store, without moving the random number generators: nothing is registered in the
    store.

    Arguments:
        guide: a guide (a ``PyroModule`` or a function using ``pyro.param``).
        *args, **kwargs: its arguments.

    Returns:
        The tensors, each once, in the order the guide reads them (a module's other parameters
        last).

    Example:
        >>> import pyro, torch
        >>> pyro.clear_param_store()
        >>> def guide():
        ...     return pyro.param("loc", torch.tensor(1.0))
        >>> _ = guide()
        >>> guide_tensors(guide)[0] is pyro.get_param_store()._params["loc"]
        True
    """
    private = ParamSnapshot.of_store(clone=False)
    with preserved_rng(args, kwargs), torch.no_grad(), warnings.catch_warnings():
        # pyro.module's note that it skips a frozen plain module: those come from parameters()
        warnings.filterwarnings("ignore", message=".*not registered in the param store")
        names = private.register(guide, *args, **kwargs)
    tensors = {id(private[n]): private[n] for n in names}
    if isinstance(guide, torch.nn.Module):
        tensors.update((id(p), p) for p in guide.parameters())
    return list(tensors.values())


@contextlib.contextmanager
def trainable(guide: Callable, *args, **kwargs) -> Iterator[list[torch.Tensor]]:
    """Inside, every tensor of :func:`guide_tensors` requires grad; on exit (also when the block
    raises) each gets back the ``requires_grad`` flag it had.

    A guide whose parameters were frozen after training (``guide.requires_grad_(False)``, as
    Pyro's regression tutorial does) would otherwise give no gradient to any optimiser: an
    unlearning run would "converge" without moving it.

    Arguments:
        guide: a guide (a ``PyroModule`` or a function using ``pyro.param``).
        *args, **kwargs: its arguments.

    Yields:
        The tensors made trainable.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)))
        >>> _ = guide()
        >>> _ = guide.requires_grad_(False)
        >>> with trainable(guide) as tensors:
        ...     [t.requires_grad for t in tensors]
        [True, True]
        >>> [p.requires_grad for p in guide.parameters()]
        [False, False]
    """
    flags: dict[int, tuple[torch.Tensor, bool]] = {}

    def switch_on(tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            flags.setdefault(id(tensor), (tensor, tensor.requires_grad))
            tensor.requires_grad_(True)

    try:
        if isinstance(guide, torch.nn.Module):  # first: pyro.module registers only these then
            switch_on(guide.parameters())
        switch_on(guide_tensors(guide, *args, **kwargs))
        yield [tensor for tensor, _ in flags.values()]
    finally:
        for tensor, flag in flags.values():
            tensor.requires_grad_(flag)
