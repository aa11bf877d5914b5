"""BIF: influence-function forgetting, Newton steps on a guide's variational parameters γ."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from pyro.poutine import Trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from tqdm import tqdm

from ..handlers import ERASED, erased_log_likelihood, unlearn
from ..posterior import FrozenPosterior, _param_store_swapped, freeze, independent_copy
from ..traces import max_plate_nesting

__all__ = ["IndefiniteHessianError", "InfluenceUnlearnResult", "influence_unlearn"]

SOLVERS = ("cg", "lissa")
_SYMMETRIC = (
    torch.distributions.Normal,
    torch.distributions.MultivariateNormal,
    torch.distributions.LowRankMultivariateNormal,
)


class IndefiniteHessianError(ValueError):
    """The Hessian of F_r(γ) = −ELBO(γ; D_r) (plus the damping) is not positive definite at γ:
    the Newton step has no minimum to aim at."""


@dataclass
class InfluenceUnlearnResult:
    """What :func:`influence_unlearn` returns.

    Attributes:
        guide: the unlearned guide, frozen (its own tensors: it shares nothing with the input
            guide or the param store). Sample it like a guide, read it with
            :func:`~pyro_unlearn.metrics.guide_moments`, or write it into a live guide of the
            same structure with ``result.guide.restore(guide)``.
        step: the total change of every parameter, γ − γ_D, in the param store's unconstrained
            space, by param-store name.
        steps: Newton steps taken.
        solver: "cg" or "lissa".
        iterations: CG iterations (LiSSA recursions) of each Newton step.
        residuals: ‖(H_r + δI)Δ − b‖ / ‖b‖ of each Newton step's solve.
        gradient_mismatch: ‖∇F_r(γ_D) + ∇h(γ_D)‖ / ‖∇h(γ_D)‖ under the step's noise: 0 when
            q(θ|D) is a stationary point of −ELBO(γ; D) (BIF's premise); large values mean the
            guide was not trained to convergence on D (or the estimate is noisy).
        lissa_scale: LiSSA's scale (``None`` for CG).
        num_batches: mini-batches of D_r per pass.
        model_evaluations: forward runs of the model on a D_r mini-batch (each vectorised over
            ``num_particles``); a pass over D_r is ``num_batches`` of them.
        hessian_vector_products: Hessian-vector products with H_r (each over all of D_r, except
            LiSSA's, each over one mini-batch).
        seconds: wall time.
    """

    guide: FrozenPosterior
    step: dict[str, torch.Tensor]
    steps: int
    solver: str
    iterations: list[int] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    gradient_mismatch: float = math.nan
    lissa_scale: float | None = None
    num_batches: int = 0
    model_evaluations: int = 0
    hessian_vector_products: int = 0
    seconds: float = 0.0


# -- common random numbers -------------------------------------------------------------------------
class _Antithetic(Messenger):
    """Pairs particle i + S/2 with particle i: a reparameterised Gaussian site's second half of
    draws is the first half reflected about its mean (ε ↦ −ε), which makes the sample mean of ε
    exactly zero. Sites whose spread depends on an earlier draw keep their independent draws."""

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
        if not isinstance(base, _SYMMETRIC) or not fn.has_rsample:
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
class _Parameters:
    """An independent copy of the guide whose parameters γ (unconstrained leaf tensors) live in a
    private param store, next to the live store's other entries (the model's, read-only)."""

    def __init__(self, guide: Callable | FrozenPosterior, args: tuple, kwargs: dict) -> None:
        store = pyro.get_param_store()
        live = dict(store._params)
        live_constraints = dict(store._constraints)
        if isinstance(guide, FrozenPosterior):
            source, is_module = dict(guide._state["params"]), guide._is_module
            base_guide = guide.guide
            names = list(source)
        else:
            if isinstance(guide, AutoGuide) and guide.prototype_trace is None:
                raise ValueError(
                    f"the {type(guide).__name__} has never been run: train it on D first"
                )
            if not callable(guide):
                raise TypeError(f"guide must be a guide (callable), got {type(guide)}")
            base_guide, is_module = guide, isinstance(guide, PyroModule)
            names = _param_names(guide, live, live_constraints, args, kwargs)
            source = {n: live[n] for n in names if n in live}
            missing = [n for n in names if n not in live]
            if missing and not is_module:
                raise ValueError(
                    f"the guide's parameters {missing} are not in the param store: train the "
                    "guide on D first (BIF updates the trained q(θ|D))"
                )
        if not names:
            raise ValueError(
                "the guide registers no parameters in the param store (no pyro.param sites): "
                "BIF has no variational parameters γ to update"
            )
        self.constraints = {n: c for n, c in live_constraints.items() if n not in names}
        self.store = {n: t for n, t in live.items() if n not in names}
        if is_module:
            self.guide = independent_copy(base_guide)
            self.guide.requires_grad_(True)
            for m in self.guide.modules():
                if not isinstance(m, PyroModule):
                    m.train(True)  # freeze() sets plain modules to eval: pyro.module skips them
            with self.context(), poutine.block():
                poutine.trace(self.guide, param_only=True).get_trace(*args, **kwargs)
            unknown = [n for n in names if n not in self.store]
            if unknown:
                raise ValueError(f"the copied guide did not register {unknown}")
        else:
            self.guide = base_guide
            for n in names:
                self.store[n] = source[n].detach().clone().requires_grad_(True)
                self.constraints[n] = (
                    guide._state["constraints"][n]
                    if isinstance(guide, FrozenPosterior)
                    else live_constraints[n]
                )
        self.names = names
        self.tensors = [self.store[n] for n in names]
        with torch.no_grad():
            for n, t in zip(names, self.tensors, strict=True):
                if n in source and source[n] is not t:
                    t.copy_(source[n])
        if not all(t.is_leaf and t.requires_grad for t in self.tensors):
            raise TypeError("the guide's parameters must be leaf tensors that require grad")
        first = self.tensors[0]
        self.dtype, self.device = first.dtype, first.device

    def context(self) -> contextlib.AbstractContextManager:
        return _param_store_swapped(self.store, self.constraints)

    @property
    def size(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def flat(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for t in self.tensors:
            out.append(vector[start : start + t.numel()].view_as(t))
            start += t.numel()
        return out

    def add_(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            for t, d in zip(self.tensors, self.split(vector), strict=True):
                t.add_(d)


def _param_names(
    guide: Callable, live: dict, constraints: dict, args: tuple, kwargs: dict
) -> list[str]:
    """The param-store names the guide reads, found by running it on a shallow copy of the store
    (whatever it would register goes there and is dropped)."""
    with _param_store_swapped(dict(live), dict(constraints)), poutine.block():
        trace = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
    return [n for n, s in trace.nodes.items() if s["type"] == "param"]


# -- the objectives F_r and h ----------------------------------------------------------------------
def _batches(remaining: Any) -> Iterable:
    if isinstance(remaining, tuple):
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
    return remaining


def _batch_args(batch: Any) -> tuple:
    if isinstance(batch, tuple | list):
        return tuple(batch)
    raise TypeError(
        f"each mini-batch of remaining must be a tuple of the model's arguments, got "
        f"{type(batch).__name__}"
    )


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


class _Objective:
    """F̂_r(γ) = Σ_b w_b L_b(γ) / Σ_b w_b and ĥ(γ) = −mean_s log p(D_e|θ_s), Monte Carlo over
    ``num_particles`` vectorised particles θ_s(γ, ε) whose base noise ε is fixed by a seed."""

    def __init__(
        self,
        model: Callable,
        params: _Parameters,
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
        self.evaluations = self.num_batches = 0
        self.dim = -self._check() - 1

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

    def _run(self, model: Callable, args: tuple, seed: int) -> tuple[Trace, Trace]:
        torch.manual_seed(seed)
        particles = pyro.plate("_bif_particles", self.particles, dim=self.dim)
        guide = particles(self.params.guide)
        if self.antithetic:
            guide = _Antithetic(self.particles, self.dim)(guide)
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

    def erased_gradient(self, seed: int) -> tuple[torch.Tensor, ...]:
        """∇_γ ĥ(γ), ĥ = −mean_s log p(D_e|θ_s)."""
        _, model_tr = self._run(self.erased_model, self.erased_args, seed)
        model_tr.compute_log_prob(site_filter=lambda _, s: s["infer"].get(ERASED) is not None)
        loss = -erased_log_likelihood(model_tr, self.dim, self.particles).mean()
        return torch.autograd.grad(
            loss, self.params.tensors, allow_unused=True, materialize_grads=True
        )


class _Hessian:
    """v ↦ (H_r + δI) v at γ for a fixed seed, by double backprop. With ``retain`` each
    mini-batch's gradient graph is kept for all products (one forward pass over D_r per Newton
    step); otherwise every product re-runs the model on each mini-batch."""

    def __init__(self, objective: _Objective, seed: int, damping: float, retain: bool) -> None:
        self.objective, self.seed, self.damping, self.retain = objective, seed, damping, retain
        self.products = 0
        self.graphs: list[tuple[torch.Tensor, ...]] = []
        params = objective.params
        gradient = torch.zeros(params.size, dtype=params.dtype, device=params.device)
        weights, unscaled = [], 0
        for batch in objective.batches:
            grads, weight = self._gradient(_batch_args(batch), create_graph=retain)
            weights.append(1.0 if weight is None else weight)
            unscaled += weight is None
            gradient += weights[-1] * params.flat(g.detach() for g in grads)
            if retain:
                self.graphs.append(grads)
        if len(weights) > 1 and unscaled:
            raise ValueError(
                f"remaining has {len(weights)} mini-batches, but the model subsamples no plate "
                "on them: each mini-batch's −ELBO must estimate −ELBO(γ; D_r), as in mini-batch "
                "SVI. Write the data plate as pyro.plate('data', size=len(D_r), "
                "subsample=batch_indices), or pass D_r as one tuple"
            )
        if not weights:
            raise ValueError("remaining holds no mini-batch: BIF needs D_r")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        objective.num_batches = len(weights)
        self.gradient = gradient / total  # ∇F̂_r(γ)

    def _gradient(
        self, args: tuple, create_graph: bool
    ) -> tuple[tuple[torch.Tensor, ...], float | None]:
        loss, weight = self.objective.remaining_loss(args, self.seed)
        grads = torch.autograd.grad(
            loss,
            self.objective.params.tensors,
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return grads, weight

    def _product(self, grads: tuple[torch.Tensor, ...], vector: torch.Tensor) -> torch.Tensor:
        params = self.objective.params
        used = [(g, v) for g, v in zip(grads, params.split(vector), strict=True) if g.requires_grad]
        if not used:  # −ELBO is linear in γ
            return torch.zeros_like(vector)
        out = torch.autograd.grad(
            [g for g, _ in used],
            params.tensors,
            grad_outputs=[v for _, v in used],
            retain_graph=self.retain,
            allow_unused=True,
            materialize_grads=True,
        )
        return params.flat(o.detach() for o in out)

    def _batch_grads(self) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        if self.retain:
            yield from enumerate(self.graphs)
        else:
            for index, batch in enumerate(self.objective.batches):
                yield index, self._gradient(_batch_args(batch), create_graph=True)[0]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """(H_r + δI) v over all of D_r."""
        self.products += 1
        total = torch.zeros_like(vector)
        for index, grads in self._batch_grads():
            total += self.weights[index] * self._product(grads, vector)
        return total + self.damping * vector

    def per_batch(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Endlessly, mini-batch after mini-batch: v ↦ (H_b + δI) v, with H_b the Hessian of
        mini-batch b's estimate L_b of F_r (LiSSA's stochastic products)."""
        while True:
            for _, grads in self._batch_grads():

                def product(vector, grads=grads):
                    self.products += 1
                    return self._product(grads, vector) + self.damping * vector

                yield product


# -- solvers ---------------------------------------------------------------------------------------
def _indefinite(curvature: float, step: int, damping: float, where: str) -> IndefiniteHessianError:
    return IndefiniteHessianError(
        f"the Hessian H_r of F_r(γ) = −ELBO(γ; D_r) plus damping δ = {damping:g} is not positive "
        f"definite at Newton step {step}: {where} found curvature {curvature:.3g} ≤ 0. γ is not "
        "near a minimum of −ELBO on D_r (the erased data may dominate q(θ|D), or the Monte Carlo "
        "estimate is too noisy): pass damping > 0 (e.g. a few percent of H_r's scale), more "
        "num_particles, or unlearn with Trace_EUBO / ReverseKL instead"
    )


def _conjugate_gradients(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    tol: float,
    max_iter: int,
    step: int,
    damping: float,
    bar: tqdm,
) -> tuple[torch.Tensor, int, float]:
    """Solve (H + δI) x = b from x = 0; raises on pᵀ(H + δI)p ≤ 0."""
    x = torch.zeros_like(b)
    norm_b = float(torch.linalg.vector_norm(b))
    if norm_b == 0.0:
        return x, 0, 0.0
    r, p = b.clone(), b.clone()
    rr = r @ r
    iterations, residual = 0, 1.0
    while iterations < max_iter:
        iterations += 1
        Hp = hvp(p)
        bar.update()
        curvature = p @ Hp
        if not bool(curvature > 0):
            raise _indefinite(float(curvature / (p @ p)), step, damping, "conjugate gradients")
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * Hp
        rr_new = r @ r
        residual = float(rr_new.sqrt()) / norm_b
        bar.set_postfix(step=step, residual=f"{residual:.2e}")
        if residual <= tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, iterations, residual


def _largest_eigenvalue(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    like: torch.Tensor,
    iterations: int,
    step: int,
    damping: float,
) -> float:
    """λ_max of H + δI by power iteration from a fixed start."""
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)
    v = v / torch.linalg.vector_norm(v)
    value = 0.0
    for _ in range(iterations):
        Hv = hvp(v)
        value = float(v @ Hv)
        norm = torch.linalg.vector_norm(Hv)
        if not bool(norm > 0):
            break
        v = Hv / norm
    if not value > 0:
        raise _indefinite(value, step, damping, "the power iteration for lissa_scale")
    return value


def _lissa(
    hessian: _Hessian,
    b: torch.Tensor,
    scale: float,
    depth: int,
    step: int,
    damping: float,
    bar: tqdm,
) -> torch.Tensor:
    """x ≈ (H + δI)⁻¹ b by the LiSSA recursion x_j = b + x_{j−1} − (H_{b_j} + δI) x_{j−1}/scale,
    x_0 = b, with the mini-batches b_j taken in turn; returns x_depth / scale."""
    x = b.clone()
    for j, product in zip(range(depth), hessian.per_batch(), strict=False):
        x = b + x - product(x) / scale
        bar.update()
        if not bool(torch.isfinite(x).all()):
            raise IndefiniteHessianError(
                f"LiSSA diverged at recursion {j + 1} of Newton step {step}: lissa_scale = "
                f"{scale:.3g} is below half of H_r's largest eigenvalue, or H_r + δI (δ = "
                f"{damping:g}) is not positive definite; raise lissa_scale or damping, or use "
                "solver='cg'"
            )
    return x / scale


class _Solver:
    """(H_r + δI)⁻¹ b by CG or LiSSA, recording iterations and relative residuals per call."""

    def __init__(
        self,
        method: str,
        damping: float,
        cg_tol: float | None,
        cg_max_iter: int | None,
        lissa_scale: float | None,
        lissa_depth: int,
    ) -> None:
        self.method, self.damping = method, damping
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter
        self.lissa_scale, self.lissa_depth = lissa_scale, lissa_depth
        self.iterations: list[int] = []
        self.residuals: list[float] = []

    def __call__(self, hessian: _Hessian, b: torch.Tensor, step: int, bar: tqdm) -> torch.Tensor:
        if self.method == "cg":
            tol = math.sqrt(torch.finfo(b.dtype).eps) if self.cg_tol is None else self.cg_tol
            max_iter = self.cg_max_iter or 2 * b.numel()
            x, its, residual = _conjugate_gradients(
                hessian, b, tol, max_iter, step, self.damping, bar
            )
            if residual > tol:
                warnings.warn(
                    f"BIF: conjugate gradients stopped after {its} iterations at relative "
                    f"residual {residual:.3g} > cg_tol = {tol:.3g} (Newton step {step}); raise "
                    "cg_max_iter, or add damping",
                    UserWarning,
                    stacklevel=3,
                )
        else:
            if self.lissa_scale is None:
                top = _largest_eigenvalue(hessian, b, 20, step, self.damping)
                self.lissa_scale = 1.1 * top
            x = _lissa(hessian, b, self.lissa_scale, self.lissa_depth, step, self.damping, bar)
            its, norm_b = self.lissa_depth, torch.linalg.vector_norm(b)
            misfit = torch.linalg.vector_norm(hessian(x) - b)
            residual = float(misfit / norm_b) if bool(norm_b > 0) else 0.0
            if residual > 0.1:
                warnings.warn(
                    f"BIF: LiSSA's solve is {residual:.3g} off (relative residual) after "
                    f"{its} recursions at lissa_scale = {self.lissa_scale:.3g} (Newton step "
                    f"{step}); raise lissa_depth or damping, or use solver='cg'",
                    UserWarning,
                    stacklevel=3,
                )
        self.iterations.append(int(its))
        self.residuals.append(float(residual))
        return x


# -- the public function ---------------------------------------------------------------------------
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _nonnegative(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    return value


def influence_unlearn(
    model: Callable,
    guide: Callable | FrozenPosterior,
    remaining: tuple | Iterable[tuple],
    *erased_args,
    erased: Any = None,
    plate: str | Mapping[str, str] | None = None,
    num_particles: int = 64,
    antithetic: bool = True,
    steps: int = 1,
    solver: str = "cg",
    damping: float = 0.0,
    cg_tol: float | None = None,
    cg_max_iter: int | None = None,
    lissa_scale: float | None = None,
    lissa_depth: int = 1000,
    retain_graph: bool = True,
    seed: int | None = None,
    progress: bool = True,
    **kwargs,
) -> InfluenceUnlearnResult:
    r"""BIF: forget D_e by Newton steps on the guide's variational parameters γ.

    With F_r(γ) = −ELBO(γ; D_r) and h(γ) = E_q[−log p(D_e|θ)], the full objective is
    −ELBO(γ; D) = F_r(γ) + h(γ); at the trained γ_D, ∇F_r(γ_D) = −∇h(γ_D), so one Newton step on
    F_r from γ_D is the influence-function update (DESIGN.md §1)

    .. math:: γ_r ≈ γ_D + H_r^{-1} ∇_γ h(γ_D), \qquad H_r = ∇^2_γ F_r(γ_D).

    γ is every parameter the guide reads from the param store (AutoNormal, AutoDiagonalNormal,
    AutoMultivariateNormal, a hand-written guide using ``pyro.param``, ...), in the store's
    unconstrained space. F_r and h are Monte Carlo estimates over ``num_particles`` vectorised
    θ(γ, ε) with **common random numbers**: ε is fixed for a whole Newton step (gradient and every
    Hessian-vector product), so H_r is one symmetric matrix; ``antithetic`` pairs ε with −ε (for
    Gaussian guide sites), which makes every term linear in ε vanish: for a Gaussian guide at the
    ELBO optimum of a linear-Gaussian model the mean update is then exact. H_r⁻¹v comes from
    Hessian-vector products (double backprop) by conjugate gradients (``cg_tol``, default √eps of
    the dtype, relative to ‖b‖; ``cg_max_iter``, default twice the number of parameters) or the
    LiSSA recursion (``lissa_depth`` products, one mini-batch each; ``lissa_scale`` must exceed
    half of H_r's largest eigenvalue, by default 1.1 × a 20-step power-iteration estimate);
    ``damping`` δ solves with H_r + δI. Never a dense inverse. If CG meets pᵀ(H_r + δI)p ≤ 0 an
    :class:`IndefiniteHessianError` is raised (overparameterised or flow guides need damping).

    Further ``steps`` are plain Newton steps on F_r, γ ← γ − H_r⁻¹ ∇F_r(γ), each with a fresh ε:
    they repair what BIF's premise gets wrong when q(θ|D) was not trained to convergence
    (``gradient_mismatch``), but they also move the scale parameters to the minimiser of that
    step's sample-average −ELBO, O(1/√num_particles) off; raise ``num_particles`` with them.

    **BIF needs D_r.** ``remaining`` is D_r as the model's arguments: one tuple, or a re-iterable
    of mini-batch tuples on which the model scales its data plate as in mini-batch SVI
    (``pyro.plate("data", size=len(D_r), subsample=idx)``); the mini-batches are weighted by
    their share of D_r, so a partition of D_r gives F_r exactly. ``*erased_args, **kwargs`` are
    D_e as for the SVI losses: the erased data alone (``erased=None``) or the full data with the
    ``erased`` rows of ``plate``; ``kwargs`` go to every call.

    Cost, against the EUBO / reverse-KL route (:class:`~pyro_unlearn.Trace_EUBO`,
    :class:`~pyro_unlearn.ReverseKL`), which reads only D_e and q(θ|D): each Newton step here
    runs the model once on every mini-batch of D_r (``retain_graph=True``, memory of the
    double-backprop graphs of all of D_r; ``False`` re-runs the model per product instead), plus
    one backward pass over D_r per Hessian-vector product (CG: about the number of parameters at
    most, often far fewer).
    Its cost grows with |D_r| and the parameter count, theirs with |D_e| × the number of SVI
    steps; in exchange one BIF step is near exact when −ELBO is near quadratic in γ.

    The input guide and its param-store entries are never modified: BIF works on an independent
    copy, returned frozen. ``guide`` may also be a :class:`~pyro_unlearn.FrozenPosterior` (the
    original q(θ|D) of a lazy, from-the-original request).

    Example (one Newton step lands on the exact D_r posterior mean of a conjugate model)::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> def guide(y):  # q(θ|D) = p(µ|D) = N(1, 1/3) for D = {1, 2}
        ...     loc = pyro.param("loc", torch.tensor(1.0, dtype=y.dtype))
        ...     scale = pyro.param("scale", torch.tensor(3.0, dtype=y.dtype) ** -0.5,
        ...                        constraint=dist.constraints.positive)
        ...     pyro.sample("mu", dist.Normal(loc, scale))
        >>> y = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> guide(y)
        >>> result = influence_unlearn(model, guide, (y[:1],), y[1:], progress=False)
        >>> round(float(result.step["loc"]), 6)  # p(µ|D_r) = N(1/2, 1/2): the mean is exact
        -0.5
        >>> float(pyro.param("loc").detach())  # the live guide is untouched
        1.0
    """
    start = time.perf_counter()
    num_particles = _positive_int("num_particles", num_particles)
    steps = _positive_int("steps", steps)
    lissa_depth = _positive_int("lissa_depth", lissa_depth)
    if antithetic and num_particles % 2:
        raise ValueError(
            f"antithetic=True pairs particles: num_particles must be even, got {num_particles}"
        )
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    damping = _nonnegative("damping", damping)
    if cg_max_iter is not None:
        cg_max_iter = _positive_int("cg_max_iter", cg_max_iter)
    if cg_tol is not None and not _nonnegative("cg_tol", cg_tol) > 0:
        raise ValueError(f"cg_tol must be positive, got {cg_tol}")
    if lissa_scale is not None and not _nonnegative("lissa_scale", lissa_scale) > 0:
        raise ValueError(f"lissa_scale must be positive, got {lissa_scale}")
    batches = _batches(remaining)
    if not erased_args and not kwargs:
        raise ValueError("pass D_e: the model's arguments for the erased data (*erased_args)")

    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    solve = _Solver(solver, damping, cg_tol, cg_max_iter, lissa_scale, lissa_depth)
    with torch.random.fork_rng(devices=devices):  # seeded draws; the user's RNG stays as it was
        torch.manual_seed(seed)
        params = _Parameters(guide, erased_args, kwargs)
        with (
            params.context(),
            torch.enable_grad(),
            tqdm(desc="BIF Hessian-vector products", disable=not progress, leave=False) as bar,
        ):
            objective = _Objective(
                model,
                params,
                batches,
                erased_args,
                kwargs,
                erased,
                plate,
                num_particles,
                antithetic,
            )
            total = torch.zeros(params.size, dtype=params.dtype, device=params.device)
            products, mismatch = 0, math.nan
            for k in range(1, steps + 1):
                hessian = _Hessian(objective, seed + k, damping, retain_graph)
                if k == 1:  # BIF: b = ∇h(γ_D), which equals −∇F_r(γ_D) at a trained γ_D
                    b = params.flat(objective.erased_gradient(seed + k))
                    norm_b = float(torch.linalg.vector_norm(b))
                    if norm_b > 0:
                        mismatch = float(torch.linalg.vector_norm(hessian.gradient + b)) / norm_b
                else:  # Newton on F_r
                    b = -hessian.gradient
                delta = solve(hessian, b, k, bar)
                products += hessian.products
                del hessian  # frees the double-backprop graphs
                params.add_(delta)
                total += delta
            unlearned = freeze(params.guide, *erased_args, **kwargs)
    return InfluenceUnlearnResult(
        guide=unlearned,
        step=dict(zip(params.names, (d.clone() for d in params.split(total)), strict=True)),
        steps=steps,
        solver=solver,
        iterations=solve.iterations,
        residuals=solve.residuals,
        gradient_mismatch=mismatch,
        lissa_scale=solve.lissa_scale,
        num_batches=objective.num_batches,
        model_evaluations=objective.evaluations,
        hessian_vector_products=products,
        seconds=time.perf_counter() - start,
    )
