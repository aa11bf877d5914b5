"""BIF's Monte Carlo objectives over a guide's parameters γ: −ELBO on D_r and −log p(D_e|θ)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ..guides.gaussian import GAUSSIAN_DISTRIBUTIONS
from ..handlers import erased_log_likelihood, is_erased, unlearn
from ..params import ParamSnapshot
from ..posterior import FrozenPosterior, independent_copy
from ..traces import max_plate_nesting
from ..validation import check_finite
from .base import check_likelihood_connected
from .newton import MiniBatchHessian, flatten, unflatten

__all__ = ["Antithetic", "GuideParameters", "InfluenceObjective", "remaining_batches"]


# -- common random numbers -------------------------------------------------------------------------
class Antithetic(Messenger):
    """Antithetic draws: pairs particle i + S/2 with particle i of a particle plate.

    A reparameterised Gaussian site's second half of draws is the first half reflected about its
    mean (ε ↦ −ε), which makes the sample mean of ε exactly zero. Sites whose spread depends on
    an earlier draw keep their independent draws.

    Arguments:
        size: S, the particle plate's size (even).
        dim: the particle plate's dim.

    Example:
        >>> import pyro, torch, pyro.distributions as dist
        >>> def guide():
        ...     with pyro.plate("particles", 4, dim=-1):
        ...         return pyro.sample("z", dist.Normal(torch.tensor(1.0), 2.0))
        >>> z = Antithetic(4, -1)(guide)()
        >>> bool(torch.allclose(z[:2] + z[2:], torch.tensor(2.0)))
        True
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size, self.dim = size, dim

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        fn = msg["fn"]
        base = fn
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
        if not isinstance(base, GAUSSIAN_DISTRIBUTIONS) or not fn.has_rsample:
            return
        value = fn(*msg["args"], **msg["kwargs"])
        pos = value.dim() - fn.event_dim + self.dim
        if pos < 0 or value.shape[pos] != self.size:
            return
        half = self.size // 2
        variance = fn.variance.expand(value.shape)
        if not torch.equal(variance.narrow(pos, 0, half), variance.narrow(pos, half, half)):
            return
        mean = fn.mean.expand(value.shape)
        deviation = (value - mean).roll(half, dims=pos)  # row i + S/2 holds row i's deviation
        second = torch.arange(self.size, device=value.device) >= half
        second = second.reshape((-1,) + (1,) * (value.dim() - pos - 1))
        msg["value"] = torch.where(second, mean - deviation, value)


# -- the guide's parameters γ ----------------------------------------------------------------------
class GuideParameters:
    """An independent copy of a trained guide whose parameters γ (unconstrained leaf tensors)
    live in a private param store, next to the live store's other entries (the model's, read).

    Arguments:
        guide: the guide trained on D, or its :class:`~pyro_unlearn.FrozenPosterior`.
        args, kwargs: the guide's arguments (D_e).

    Attributes:
        guide: the copy to run (inside :meth:`context`).
        names, tensors: γ's param-store names and tensors, in the order the guide reads them.
    """

    def __init__(self, guide: Callable | FrozenPosterior, args: tuple, kwargs: dict) -> None:
        if isinstance(guide, FrozenPosterior):
            base_guide, source = guide.guide, guide.params
        else:
            _check_trained(guide)
            base_guide, source = guide, ParamSnapshot.take(guide, *args, **kwargs)
        names = list(source)
        if not names:
            raise ValueError(
                "the guide registers no parameters in the param store (no pyro.param sites): "
                "BIF has no variational parameters γ to update"
            )
        live = pyro.get_param_store()
        missing = [n for n in names if n not in live]
        if isinstance(guide, FrozenPosterior):
            missing = []
        elif missing and not isinstance(base_guide, PyroModule):
            raise ValueError(
                f"the guide's parameters {missing} are not in the param store: train the "
                "guide on D first (BIF updates the trained q(θ|D))"
            )
        # the live store's other entries (the model's) are shared, read-only
        self.store = ParamSnapshot.of_store(exclude=names, clone=False)
        if isinstance(base_guide, PyroModule):
            self.guide = _trainable_copy(base_guide)
            self.store.register(self.guide, *args, **kwargs)
            unknown = [n for n in names if n not in self.store]
            if unknown:
                raise ValueError(f"the copied guide did not register {unknown}")
            with torch.no_grad():  # a parameter the guide had not registered keeps the copy's
                for n in names:
                    if n not in missing:
                        self.store[n].copy_(source[n])
        else:
            self.guide = base_guide
            self.store.update(source.clone(requires_grad=True))
        self.names = names
        self.tensors = [self.store[n] for n in names]
        if not all(t.is_leaf and t.requires_grad for t in self.tensors):
            raise TypeError("the guide's parameters must be leaf tensors that require grad")
        first = self.tensors[0]
        self.dtype, self.device = first.dtype, first.device

    def context(self) -> contextlib.AbstractContextManager:
        """Inside, the global param store is the private one."""
        return self.store.active()

    @property
    def size(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def flat(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        return flatten(tensors, self.dtype)

    def split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return unflatten(vector, self.tensors)

    def add_(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            for t, d in zip(self.tensors, self.split(vector), strict=True):
                t.add_(d)


def _check_trained(guide: Any) -> None:
    if not callable(guide):
        raise TypeError(f"guide must be a guide (callable), got {type(guide)}")
    if isinstance(guide, AutoGuide) and guide.prototype_trace is None:
        raise ValueError(f"the {type(guide).__name__} has never been run: train it on D first")


def _trainable_copy(guide: PyroModule) -> PyroModule:
    copied = independent_copy(guide)
    copied.requires_grad_(True)
    for m in copied.modules():
        if not isinstance(m, PyroModule):
            m.train(True)  # freeze() sets plain modules to eval: pyro.module skips them
    return copied


# -- the objectives F_r and h ----------------------------------------------------------------------
def remaining_batches(remaining: Any) -> Iterable:
    """D_r as a re-iterable of mini-batches: ``[remaining]`` for one tuple, else ``remaining``.

    Raises:
        TypeError: for anything but a tuple or a re-iterable (a one-shot iterator included).
        ValueError: for a non-finite value in a tuple or a sequence of mini-batches, named
            ``remaining[i]`` or ``remaining[b][i]`` with its first bad row (other iterables are
            checked as each mini-batch is read).
    """
    if isinstance(remaining, tuple):
        for i, value in enumerate(remaining):
            check_finite(f"remaining[{i}]", value)
        return [remaining]
    if isinstance(remaining, torch.Tensor | Mapping | str) or not isinstance(remaining, Iterable):
        raise TypeError(
            "remaining must be D_r as the model's arguments (a tuple) or an iterable of such "
            f"tuples (mini-batches), got {type(remaining).__name__}"
        )
    if iter(remaining) is remaining:
        raise TypeError(
            "remaining is a one-shot iterator, but BIF passes over D_r once per Hessian-vector "
            "product: give a list of mini-batches or a re-iterable (e.g. a DataLoader)"
        )
    if isinstance(remaining, Sequence):  # in memory: check every mini-batch up front
        for b, batch in enumerate(remaining):
            _batch_args(batch, f"remaining[{b}]")
    return remaining


def _batch_args(batch: Any, name: str = "a mini-batch of remaining") -> tuple:
    """A mini-batch of D_r as the model's arguments, each checked finite."""
    if not isinstance(batch, tuple | list):
        raise TypeError(
            f"each mini-batch of remaining must be a tuple of the model's arguments, got "
            f"{type(batch).__name__}"
        )
    for i, value in enumerate(batch):
        check_finite(f"{name}[{i}]", value)
    return tuple(batch)


def _subsample_weight(trace: Trace) -> float | None:
    """Π size / full size over the trace's subsampled plates (a mini-batch's share of D_r), or
    ``None`` when no plate subsamples."""
    weight, found = 1.0, False
    for site in trace.nodes.values():
        if site["type"] == "sample" and site_is_subsample(site):
            full, size = getattr(site["fn"], "size", None), len(site["value"])
            if full and size != full:
                weight, found = weight * size / full, True
    return weight if found else None


class InfluenceObjective:
    r"""BIF's objectives, Monte Carlo over vectorised particles θ_s(γ, ε) with ε fixed by a seed.

    .. math:: \hat F_r(γ) = \frac{\sum_b w_b L_b(γ)}{\sum_b w_b}, \qquad
              \hat h(γ) = -\frac1S \sum_s \log p(D_e|θ_s),

    with L_b the −ELBO on mini-batch b of D_r (scaled as in mini-batch SVI) and w_b its share.

    Arguments:
        model: the Pyro model.
        params: the guide's parameters γ.
        batches: the mini-batches of D_r (see :func:`remaining_batches`).
        erased_args, kwargs: D_e as the model takes it.
        erased, plate: the erased rows of the data plate, as for
            :func:`~pyro_unlearn.handlers.unlearn`.
        particles: S.
        antithetic: pair the particles (:class:`Antithetic`).

    Attributes:
        evaluations: the forward runs of the model on a mini-batch of D_r so far.
    """

    def __init__(
        self,
        model: Callable,
        params: GuideParameters,
        batches: Iterable,
        erased_args: tuple,
        kwargs: dict,
        erased: Any,
        plate: str | Mapping[str, str] | None,
        particles: int,
        antithetic: bool,
    ) -> None:
        self.model, self.params, self.batches = model, params, batches
        self.erased_model = unlearn(model, erased=erased, plate=plate)
        self.erased_args, self.kwargs = erased_args, kwargs
        self.particles, self.antithetic = particles, antithetic
        self.evaluations = 0
        self.dim = -self._check() - 1
        self._check_dependence()

    def _check(self) -> int:
        """One plain run on D_e: clear errors (erased rows, plates, non-reparameterised guide
        sites) and the plate nesting the particle plate must sit left of."""
        with torch.no_grad(), self.params.context(), poutine.block():
            guide_tr = poutine.trace(self.params.guide).get_trace(*self.erased_args, **self.kwargs)
            model_tr = poutine.trace(poutine.replay(self.erased_model, trace=guide_tr)).get_trace(
                *self.erased_args, **self.kwargs
            )
        for name, site in guide_tr.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if not site["fn"].has_rsample:
                raise TypeError(
                    f"guide site {name!r} ({type(site['fn']).__name__}) is not "
                    "reparameterised: BIF differentiates −ELBO twice through θ(γ, ε)"
                )
        return max(max_plate_nesting(guide_tr), max_plate_nesting(model_tr))

    def _check_dependence(self) -> None:
        """One run on D_e with gradients: log p(D_e|θ) must depend on the guide's draws θ (a
        model computing it from anything else leaves ∇_γ h = 0: BIF would do nothing)."""
        with torch.enable_grad(), self.params.context(), poutine.block():
            guide_tr = poutine.trace(self.params.guide).get_trace(*self.erased_args, **self.kwargs)
            model_tr = poutine.trace(poutine.replay(self.erased_model, trace=guide_tr)).get_trace(
                *self.erased_args, **self.kwargs
            )
            model_tr.compute_log_prob(site_filter=is_erased)
            check_likelihood_connected(model_tr, erased_log_likelihood(model_tr)[0])

    def _run(self, model: Callable, args: tuple, seed: int) -> tuple[Trace, Trace]:
        torch.manual_seed(seed)
        particles = pyro.plate("_bif_particles", self.particles, dim=self.dim)
        guide = particles(self.params.guide)
        if self.antithetic:
            guide = Antithetic(self.particles, self.dim)(guide)
        with poutine.block():
            guide_tr = poutine.trace(guide).get_trace(*args, **self.kwargs)
            model_tr = poutine.trace(poutine.replay(particles(model), trace=guide_tr)).get_trace(
                *args, **self.kwargs
            )
        return guide_tr, model_tr

    def remaining_loss(self, args: tuple, seed: int) -> tuple[torch.Tensor, float | None]:
        """L_b(γ) = −ELBO on mini-batch b (Pyro's scaling: an estimate of F_r) and w_b."""
        guide_tr, model_tr = self._run(self.model, args, seed)
        self.evaluations += 1
        elbo = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
        return -elbo / self.particles, _subsample_weight(model_tr)

    def erased_gradient(self, seed: int) -> torch.Tensor:
        """∇_γ ĥ(γ), ĥ = −mean_s log p(D_e|θ_s), flat."""
        _, model_tr = self._run(self.erased_model, self.erased_args, seed)
        model_tr.compute_log_prob(site_filter=is_erased)
        loss = -erased_log_likelihood(model_tr, self.dim, self.particles).mean()
        grads = torch.autograd.grad(
            loss, self.params.tensors, allow_unused=True, materialize_grads=True
        )
        return self.params.flat(grads)

    def hessian(self, seed: int, damping: float, retain: bool) -> MiniBatchHessian:
        """v ↦ (H_r + δI) v at the current γ, with ε fixed by ``seed`` for every product."""

        def batch_loss(batch: Any) -> tuple[torch.Tensor, float | None]:
            return self.remaining_loss(_batch_args(batch), seed)

        return MiniBatchHessian(batch_loss, self.batches, self.params.tensors, damping, retain)
