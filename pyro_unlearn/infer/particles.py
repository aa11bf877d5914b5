"""A Pyro model run at many latent draws at once: log p(D_e|θ_s), log-targets and gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import Transform, biject_to
from torch.func import grad_and_value, vmap
from tqdm import tqdm

from ..handlers import ERASED, erased_log_likelihood, is_erased, unlearn
from ..traces import max_plate_nesting, subsampled_plates, sum_per_particle
from .hmc import hmc_moves, whitening

__all__ = ["ParticleModel", "hmc_moves", "whitening"]


class _ConditionLatents(Messenger):
    """Condition the model's *latent* sites on given values (an observed site is never
    overridden) and record what was conditioned and which given names are observed data."""

    def __init__(self, data: Mapping[str, torch.Tensor], check_shapes: bool = False) -> None:
        super().__init__()
        self.data, self.conditioned, self.observed = data, set(), set()
        self.check_shapes = check_shapes

    def _pyro_sample(self, msg) -> None:
        name = msg["name"]
        if name not in self.data or site_is_subsample(msg) or msg["infer"].get("_deterministic"):
            return
        if msg["is_observed"]:
            self.observed.add(name)
            return
        value = self.data[name]
        if self.check_shapes and value.shape != msg["fn"].shape():
            raise ValueError(
                f"site {name!r} has shape {tuple(msg['fn'].shape())} in the model, but its draws "
                f"have shape {tuple(value.shape)} (after the draw dim)"
            )
        msg["value"], msg["is_observed"] = value, True
        self.conditioned.add(name)


@dataclass
class _Site:
    name: str
    shape: torch.Size  # constrained, one draw
    event_dim: int
    transform: Transform | None  # unconstrained → constrained; None for a discrete site
    ushape: torch.Size  # unconstrained, one draw
    start: int
    stop: int


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _vmapped(fn: Callable, values: Any) -> Any:
    """``vmap(fn)(values)`` with Pyro's validation off (argument checks are data-dependent
    control flow, which vmap refuses) and a clear error for what vmap cannot batch."""
    try:
        with pyro.validation_enabled(False):
            return vmap(fn, randomness="error")(values)
    except RuntimeError as e:
        if "random" in str(e):
            raise ValueError(
                "the model draws random numbers at fixed θ: every latent site needs draws, and "
                "no plate may subsample"
            ) from e
        raise RuntimeError(
            f"torch.func.vmap could not batch the model over draws ({e}); pass "
            "vectorize='plate' if the model broadcasts over a leading particle dim"
        ) from e


class ParticleModel:
    """``unlearn(model, erased=erased, plate=plate)`` run at many draws θ_s of its latent sites at
    once, ``chunk_size`` draws at a time: ``vectorize="vmap"`` batches any model with
    ``torch.func.vmap``; ``"plate"`` wraps it in a ``pyro.plate`` left of its own plates (the
    model must then broadcast, as for ``vectorize_particles``).

    Arguments:
        model: the Pyro model.
        draws: site → (S, ...) constrained draws; the first one checks the sites and shapes.
        args, kwargs: the model's arguments.
        erased, plate: as for :func:`~pyro_unlearn.unlearn`.
        vectorize: "vmap" or "plate".
        chunk_size: draws per model run.

    Raises ``ValueError`` when the draws miss a latent site, name an observed one, have the wrong
    shape, when a plate subsamples, or when nothing is erased.
    """

    def __init__(
        self,
        model: Callable,
        draws: Mapping[str, torch.Tensor],
        args: tuple,
        kwargs: dict,
        erased: Any,
        plate: str | Mapping[str, str] | None,
        vectorize: str = "vmap",
        chunk_size: int = 1024,
    ) -> None:
        self.raw, self.model = model, unlearn(model, erased=erased, plate=plate)
        self.args, self.kwargs = args, kwargs
        self.vectorize, self.chunk_size = vectorize, int(chunk_size)
        trace, conditioned = self._first_trace(draws)
        self.sites = self._read_sites(trace, conditioned)
        self.dim = self.sites[-1].stop if self.sites else 0
        self.latents = [s.name for s in self.sites]
        self.nesting = max(
            [max_plate_nesting(trace)]
            + [
                len(s["fn"].batch_shape)
                for s in trace.nodes.values()
                if s["type"] == "sample" and not site_is_subsample(s)
            ]
        )
        if self.latents:
            trace.compute_log_prob(site_filter=is_erased)
            erased_log_likelihood(trace)  # raises when nothing is flagged

    def _first_trace(self, draws: Mapping[str, torch.Tensor]) -> tuple[Trace, set[str]]:
        """The model's trace at the first draw, every check that can fail on it done."""
        first = {name: value[0] for name, value in draws.items()}
        condition = _ConditionLatents(first, check_shapes=True)
        with torch.no_grad(), poutine.block():  # with the user's validation: clear errors
            trace = poutine.trace(condition(self.model)).get_trace(*self.args, **self.kwargs)
        if condition.observed:
            raise ValueError(
                f"samples hold draws of observed site(s) {sorted(condition.observed)} of the "
                "model; pass draws of its latent sites only"
            )
        missing = [name for name, site in trace.nodes.items() if _is_latent(site)]
        if missing:
            raise ValueError(
                f"samples have no draws of the model's latent site(s) {missing} (got "
                f"{sorted(draws)}): log p(D_e|θ) needs every latent site"
            )
        subsampled = subsampled_plates(trace)
        if subsampled:
            raise ValueError(
                f"plate(s) {subsampled} subsample: reweighting needs log p(D_e|θ_s) exactly; "
                "pass the data without subsampling"
            )
        return trace, condition.conditioned

    @staticmethod
    def _read_sites(trace: Trace, conditioned: set[str]) -> list[_Site]:
        """Shapes, supports and slices of the flattened unconstrained vector, in model order."""
        sites, start = [], 0
        for name in sorted(conditioned, key=list(trace.nodes).index):
            site = trace.nodes[name]
            shape, support = site["value"].shape, site["fn"].support
            transform = biject_to(support) if not support.is_discrete else None
            ushape = shape if transform is None else transform.inv(site["value"]).shape
            stop = start + ushape.numel()
            sites.append(_Site(name, shape, site["fn"].event_dim, transform, ushape, start, stop))
            start = stop
        return sites

    # -- evaluation --------------------------------------------------------------------------
    def _trace(self, model: Callable, values: Mapping, args: tuple, kwargs: dict) -> Trace:
        conditioned = _ConditionLatents(values)(model)
        with poutine.block():  # nothing reaches the user's handlers (e.g. an enclosing SVI)
            return poutine.trace(conditioned).get_trace(*args, **kwargs)

    def _plated(self, model: Callable, values: Mapping[str, torch.Tensor], num: int) -> tuple:
        """Draws reshaped to (num, 1, ..., site shape) and the model in a plate of size num."""
        dim = -self.nesting - 1
        shaped = {}
        for site in self.sites:
            pad = self.nesting - (len(site.shape) - site.event_dim)
            shaped[site.name] = values[site.name].reshape((num,) + (1,) * pad + site.shape)
        return pyro.plate("_mcmc_unlearn_draws", num, dim=dim)(model), shaped, dim

    def erased_log_likelihood(
        self, draws: Mapping[str, torch.Tensor], progress: bool = False
    ) -> torch.Tensor:
        """ℓ_s = log p(D_e|θ_s) of every draw (S, ...) → (S,), without gradients."""
        num = draws[self.latents[0]].shape[0]
        parts = list(_chunks(num, self.chunk_size))
        bar = tqdm(parts, desc="log p(D_e|θ)", disable=not progress, leave=False)
        with torch.no_grad():
            return torch.cat(
                [self._erased_chunk({k: draws[k][p] for k in self.latents}) for p in bar]
            )

    def _erased_chunk(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.vectorize == "vmap":

            def one(vals):
                trace = self._trace(self.model, vals, self.args, self.kwargs)
                trace.compute_log_prob(site_filter=is_erased)
                return erased_log_likelihood(trace)[0]

            return _vmapped(one, values)
        num = values[self.latents[0]].shape[0]
        model, shaped, dim = self._plated(self.model, values, num)
        trace = self._trace(model, shaped, self.args, self.kwargs)
        trace.compute_log_prob(site_filter=is_erased)
        return erased_log_likelihood(trace, dim, num)

    def constrain(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Unconstrained (n, P) → constrained draws {site: (n, ...)} and Σ log|det J| (n,)."""
        lead = u.shape[:-1]
        values, log_det = {}, u.new_zeros(lead)
        for s in self.sites:
            part = u[..., s.start : s.stop].reshape(lead + s.ushape)
            value = s.transform(part)
            ladj = s.transform.log_abs_det_jacobian(part, value)
            log_det = log_det + ladj.reshape(lead + (-1,)).sum(-1)
            values[s.name] = value
        return values, log_det

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Constrained draws {site: (n, ...)} → the unconstrained (n, P)."""
        parts = [
            s.transform.inv(values[s.name]).reshape(len(values[s.name]), -1) for s in self.sites
        ]
        return torch.cat(parts, dim=-1)

    def log_target_and_grad(
        self, u: torch.Tensor, target: Callable, args: tuple, kwargs: dict, drop_erased: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(θ, D_r) + log|det J| at unconstrained u (n, P) and its gradient (n, P), where
        ``target`` is the model on D_r, or the unlearned model with ``drop_erased``."""
        parts = [
            self._log_target_chunk(u[c], target, args, kwargs, drop_erased)
            for c in _chunks(len(u), self.chunk_size)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _log_target_chunk(self, u, target, args, kwargs, drop_erased):
        def total(trace, dim, num):
            trace.compute_log_prob()
            out = None
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                lp = site["log_prob"]
                flag = site["infer"].get(ERASED) if drop_erased else None
                if flag is True:
                    continue
                if flag is not None:
                    lp = torch.where(flag, lp.new_zeros(()), lp)
                term = sum_per_particle(lp, dim, num)
                out = term if out is None else out + term
            return out

        if self.vectorize == "vmap":

            def one(v):
                values, log_det = self.constrain(v)
                return total(self._trace(target, values, args, kwargs), None, 1)[0] + log_det

            grad, value = _vmapped(grad_and_value(one), u)
            return value.detach(), grad.detach()
        num = u.shape[0]
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            values, log_det = self.constrain(u)
            model, shaped, dim = self._plated(target, values, num)
            value = total(self._trace(model, shaped, args, kwargs), dim, num) + log_det
            (grad,) = torch.autograd.grad(value.sum(), u)
        return value.detach(), grad.detach()
