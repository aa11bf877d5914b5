"""log p(D_e|θ) for a batch of θ as one compiled tensor program: the model is traced once."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from .. import handlers
from ..handlers import erased_log_likelihood, is_erased, unlearn
from ..posterior import FrozenPosterior
from ..traces import max_plate_nesting, preserved_rng, vectorization_problem
from ..validation import check_finite_data

__all__ = ["ErasedLikelihood", "erased_log_likelihood_fn"]

_PARTICLES = "_fused_particles"
_CACHE_SIZE = 4  # compiled programs kept, one per (S, dtype, device)
#: Where a tensor read into Python is the library's or Pyro's own bookkeeping (shapes, masks),
#: not the model's control flow.
_OWN_CODE = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (torch.__file__, pyro.__file__, handlers.__file__)
)


class ErasedLikelihood:
    r"""θ ↦ log p(D_e|θ) per particle, for a batch of S draws given by site:

    .. math:: \ell(θ_{1:S}) = \Big(\textstyle\sum_{i \in D_e} \log p(y_i | θ_s)\Big)_{s=1}^S .

    Built by :func:`erased_log_likelihood_fn`. The traced path runs the model, wrapped by
    :func:`~pyro_unlearn.unlearn` and conditioned on the draws, once in a ``pyro.plate`` of S
    particles (Pyro's handlers on every call). The fused path records that run once per
    (S, dtype, device) with :func:`torch.jit.trace` (as Pyro's ``JitTrace_ELBO`` does) and then
    replays only its tensor operations: the same numbers, with gradients, without the handler
    stack. It is used when the recording can be trusted (see :attr:`reason`), else the traced
    path is.

    Attributes:
        shapes: each latent site's value shape in one run of the model, by name.
        nesting: the model's plate nesting (the particle plate sits left of it).
        fused: whether the last call took the fused path.
        reason: why the fused path is not used (``None`` while it is, or before the first call).
    """

    def __init__(
        self,
        model: Callable,
        shapes: dict[str, torch.Size],
        batch_dims: dict[str, int],
        nesting: int,
        args: tuple,
        kwargs: dict,
        jit: bool,
    ) -> None:
        self.model, self.shapes, self.nesting = model, shapes, nesting
        self._batch_dims, self._args, self._kwargs = batch_dims, args, kwargs
        self._programs: dict[tuple, Callable | None] = {}
        self.fused = False
        self.reason: str | None = None if jit else "jit=False"
        self._jit = jit

    def __call__(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(D_e|θ_s) for the draws ``values`` ({site: (S, *shape)}), a tensor (S,)."""
        batched = self._batched(values)
        first = batched[0]
        key = (first.shape[0], first.dtype, first.device)
        if self._jit and key not in self._programs:
            self._programs[key] = self._compile(batched)
            while len(self._programs) > _CACHE_SIZE:
                self._programs.pop(next(iter(self._programs)))
        program = self._programs.get(key) if self._jit else None
        self.fused = program is not None
        return program(*batched) if program is not None else self._traced(*batched)

    def traced(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The same through Pyro's handlers, every call (the reference the fused path matches)."""
        return self._traced(*self._batched(values))

    # -- the two paths -----------------------------------------------------------------------
    def _batched(self, values: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The draws in the model's site order, reshaped to (S, 1…, *shape) for the plate."""
        if set(values) != set(self.shapes):
            raise ValueError(
                f"values must give exactly the model's latent sites {sorted(self.shapes)}, got "
                f"{sorted(values)}"
            )
        out, size = [], None
        for name, shape in self.shapes.items():
            value = torch.as_tensor(values[name])
            if value.dim() < 1 or tuple(value.shape[1:]) != tuple(shape):
                raise ValueError(
                    f"values[{name!r}] must have shape (S, *{tuple(shape)}), got "
                    f"{tuple(value.shape)}"
                )
            if size is not None and value.shape[0] != size:
                raise ValueError(f"the sites' draws disagree on S: {size} and {value.shape[0]}")
            size = value.shape[0]
            ones = (1,) * (self.nesting - self._batch_dims[name])
            out.append(value.reshape(size, *ones, *shape))
        return out

    def _traced(self, *batched: torch.Tensor) -> torch.Tensor:
        S, dim = batched[0].shape[0], -self.nesting - 1
        data = dict(zip(self.shapes, batched, strict=True))
        conditioned = poutine.condition(self.model, data=data)
        with poutine.block():
            trace = poutine.trace(pyro.plate(_PARTICLES, S, dim=dim)(conditioned)).get_trace(
                *self._args, **self._kwargs
            )
        trace.compute_log_prob(site_filter=is_erased)
        return erased_log_likelihood(trace, dim, S)

    def _compile(self, batched: list[torch.Tensor]) -> Callable | None:
        """The recorded program, or ``None`` with :attr:`reason` set when it cannot be trusted:
        the model draws random numbers (two runs at the same θ differ), reads a θ-dependent
        tensor into Python control flow, or the recording differs from the model at the call's
        draws or at draws permuted across particles."""
        example = [b.detach() for b in batched]
        with torch.no_grad(), preserved_rng(self._args, self._kwargs):
            once, twice = self._traced(*example), self._traced(*example)
        if not _close(once, twice):
            return self._refuse(
                "log p(D_e|θ) differs between two runs at the same θ: the model draws random "
                "numbers (a subsampling plate drawing erased rows, a site the posterior does not "
                "hold)"
            )
        with warnings.catch_warnings(record=True) as caught, pyro.validation_enabled(False):
            warnings.simplefilter("always")
            try:
                program = torch.jit.trace(self._traced, tuple(example), check_trace=False)
            except Exception as error:  # noqa: BLE001 - any failure means: run the model itself
                return self._refuse(f"torch.jit.trace raised {type(error).__name__}: {error}")
        reads = [w for w in caught if _reads_tensor_in_model(w)]
        if reads:
            w = reads[0]
            return self._refuse(
                f"the model reads a tensor into Python at {w.filename}:{w.lineno} (a branch on "
                "θ would be frozen into the recording)"
            )
        flipped = [b.flip(0) for b in example]
        with torch.no_grad():
            for draws, reference in ((example, once), (flipped, self._traced(*flipped))):
                if not _close(program(*draws), reference):
                    return self._refuse("the recorded program differs from the model's trace")
        self.reason = None
        return program

    def _refuse(self, reason: str) -> None:
        self.reason = reason
        return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if a.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True))


def _reads_tensor_in_model(caught: warnings.WarningMessage) -> bool:
    """A TracerWarning that a tensor became a Python value in the user's code."""
    return (
        issubclass(caught.category, torch.jit.TracerWarning)
        and "Converting a tensor to a Python" in str(caught.message)
        and not os.path.abspath(caught.filename).startswith(_OWN_CODE)
    )


def erased_log_likelihood_fn(
    model: Callable[..., Any],
    posterior: FrozenPosterior,
    *args: Any,
    erased: Any = None,
    plate: str | tuple[str, ...] | Mapping[str, Any] | None = None,
    jit: bool = True,
    **kwargs: Any,
) -> ErasedLikelihood:
    r"""A function θ ↦ log p(D_e|θ) for batches of draws, compiled from one trace of the model.

    .. math:: \ell(θ_s) = \textstyle\sum_{i \in D_e} \log p(y_i|θ_s), \qquad s = 1, …, S,

    the erased log-likelihood that the unlearning losses read from a vectorised trace
    (:func:`~pyro_unlearn.handlers.erased_log_likelihood`), as one tensor computation. The model
    is traced once, replayed on a draw of ``posterior``, to learn its latent sites, their
    shapes and its plates; the first call with S draws records the model's run in a plate of S
    particles with :func:`torch.jit.trace`, and later calls replay the recording (no Pyro
    handler runs). The recording is checked against the model before use; where it cannot be
    trusted (random draws inside the model, a θ-dependent Python branch, a mismatch), the
    returned function runs the model through Pyro's handlers instead and says why in
    ``reason``. The model's own ``pyro.param`` values are read when recording and then held
    fixed, as every unlearning loss holds them.

    Arguments:
        model: the Pyro model (not wrapped by :func:`~pyro_unlearn.unlearn`: this does it).
        posterior: q(θ|D), frozen; its draws give the model's latent sites and shapes.
        *args, **kwargs: the model's arguments: D_e alone (``erased=None``) or the full data
            with ``erased`` rows of ``plate``.
        erased, plate: as :func:`~pyro_unlearn.unlearn`'s.
        jit: record and replay (``True``) or always run the model (``False``).

    Returns:
        An :class:`ErasedLikelihood`: call it with ``{site: (S, *shape)}`` (the model's latent
        sites, constrained values) for a tensor (S,); ``reason`` says why it is not fused.

    Raises:
        TypeError: for a ``posterior`` that is not a :class:`~pyro_unlearn.FrozenPosterior`.
        ValueError: for non-finite data, or a model that cannot take a particle plate (no path
            evaluates it for a batch of θ).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020
        (Sec. 3: log p(D_e|θ), the term every unlearning objective evaluates).

    Example:
        >>> import pyro, torch, pyro.distributions as dist, pyro_unlearn as pu
        >>> from pyro.infer.autoguide import AutoNormal
        >>> pyro.clear_param_store()
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.zeros(5)
        >>> guide = AutoNormal(model)
        >>> _ = guide(y)
        >>> fn = erased_log_likelihood_fn(model, pu.freeze(guide), y, erased=[0, 1], plate="data")
        >>> ll = fn({"mu": torch.tensor([0.0, 1.0])})  # log N(0; μ, 1) twice, at μ = 0 and 1
        >>> torch.allclose(ll, torch.tensor([-1.8379, -2.8379]), atol=1e-4), fn.fused
        (True, True)
    """
    if not isinstance(posterior, FrozenPosterior):
        raise TypeError(
            f"posterior must be a FrozenPosterior (pu.freeze(guide)), got "
            f"{type(posterior).__name__}"
        )
    if not isinstance(jit, bool):
        raise TypeError(f"jit must be True or False, got {type(jit).__name__}")
    check_finite_data(args, kwargs)
    wrapped = unlearn(model, erased=erased, plate=plate)
    problem = vectorization_problem(wrapped, posterior, args, kwargs, 2)
    if problem is not None:
        raise ValueError(f"the model cannot evaluate a batch of θ in a pyro.plate: {problem}")
    with preserved_rng(args, kwargs), torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(posterior).get_trace(*args, **kwargs)
        trace = poutine.trace(poutine.replay(wrapped, trace=guide_trace)).get_trace(*args, **kwargs)
    shapes, batch_dims = {}, {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            shapes[name] = site["value"].shape
            batch_dims[name] = site["value"].dim() - site["fn"].event_dim
    return ErasedLikelihood(
        wrapped, shapes, batch_dims, max_plate_nesting(trace), args, kwargs, jit
    )
