"""L-BUN: Laplace Bayesian unlearning of a Gaussian posterior (full Hessian, diagonal or GGN)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoGuide,
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.nn import PyroModule
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to
from torch.func import grad, grad_and_value, hessian, jvp, vjp, vmap

from ..exact import NotNormalizableError
from ..handlers import ERASED, erased_log_likelihood, unlearn
from ..posterior import FrozenPosterior
from ..traces import subsampled_plates

__all__ = ["LaplaceUnlearnResult", "laplace_unlearn"]

#: Hessian structures: dense ones (Newton for θ*) and diagonal ones (L-BFGS for θ*, never P×P).
CURVATURES = ("full", "ggn", "diag", "ggn_diag")
_DIAGONAL = ("diag", "ggn_diag")
_SUPPORTED = (
    "AutoMultivariateNormal (also AutoLaplaceApproximation.laplace_approximation()'s output), "
    "AutoDiagonalNormal or AutoNormal"
)
_CAUSE = (
    "the erased data carry more curvature than q(θ|D) holds — were they ever in the posterior, "
    "and is q(θ|D) accurate where they pull θ?"
)


@dataclass
class LaplaceUnlearnResult:
    """What :func:`laplace_unlearn` returns.

    Attributes:
        guide: the unlearned guide N(θ*, Λ̃⁻¹), of the input guide's kind, its parameters held as
            buffers (as Pyro's ``laplace_approximation()`` does), so it shares nothing with the
            original guide or the param store.
        theta_star: θ* (P,), the unconstrained latents flattened in the guide's site order.
        precision: Λ̃, (P, P) for an AutoMultivariateNormal, its diagonal (P,) otherwise
            (after any repair).
        lam: λ_L (> 0; 1 is the division itself).
        curvature: "full", "ggn", "diag" or "ggn_diag".
        optimizer: "newton" (dense curvatures) or "lbfgs" (diagonal ones).
        steps: optimiser iterations taken.
        converged: whether θ* met the tolerance within the allowed steps.
        concave: whether λ_L Λ_D − H_e was positive definite at every Newton iterate (θ* is a
            maximum of the L-BUN objective); ``None`` for L-BFGS.
        min_eigenvalue: the smallest eigenvalue of Λ̃ (its smallest entry when diagonal) before
            any repair; ≤ 0 means q(θ|D)/p(D_e|θ) had no Laplace approximation.
        repaired: whether ``repair="clip"`` had to clip Λ̃.
        num_clipped: how many eigenvalues (diagonal entries) were raised to ``floor``.
        floor: the eigenvalue floor of the repair (``None`` when nothing was repaired).
        probes: Rademacher probes of the Hutchinson estimate (``None``: exact diagonal).
        seconds: wall time.
    """

    guide: AutoGuide
    theta_star: torch.Tensor
    precision: torch.Tensor
    lam: float
    curvature: str
    optimizer: str
    steps: int
    converged: bool
    concave: bool | None
    min_eigenvalue: float
    repaired: bool = False
    num_clipped: int = 0
    floor: float | None = None
    probes: int | None = None
    seconds: float = 0.0


# -- the Gaussian q(θ|D) of a guide ------------------------------------------------------------
@dataclass
class _Site:
    name: str
    shape: torch.Size  # unconstrained
    transform: torch.distributions.Transform  # unconstrained → constrained
    start: int
    stop: int


@dataclass
class _Gaussian:
    kind: type  # AutoMultivariateNormal, AutoDiagonalNormal or AutoNormal
    source: AutoGuide
    loc: torch.Tensor  # μ_D (P,)
    precision: torch.Tensor  # Λ_D: (P, P), or its diagonal (P,)
    sites: list[_Site]

    @property
    def dense(self) -> bool:
        return self.precision.dim() == 2

    def precision_times(self, v: torch.Tensor) -> torch.Tensor:
        return self.precision @ v if self.dense else self.precision * v

    def values(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's site values (constrained) of a flat unconstrained θ in this layout."""
        return {s.name: s.transform(theta[s.start : s.stop].reshape(s.shape)) for s in self.sites}


def _read_gaussian(guide: Any) -> _Gaussian:
    if isinstance(guide, FrozenPosterior):
        with guide.context():
            return _read_gaussian(guide.guide)
    if isinstance(guide, AutoLaplaceApproximation):
        raise TypeError(
            "got the MAP guide AutoLaplaceApproximation; pass its Gaussian, "
            "guide.laplace_approximation(*args), instead"
        )
    kinds = (AutoMultivariateNormal, AutoDiagonalNormal, AutoNormal)
    kind = next((k for k in kinds if isinstance(guide, k)), None)
    if kind is None:
        raise TypeError(f"laplace_unlearn needs a {_SUPPORTED}, got {type(guide).__name__}")
    if guide.prototype_trace is None:
        raise ValueError(f"the {type(guide).__name__} has never been run: train it on D first")
    sites, start = [], 0
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        transform = biject_to(site["fn"].support)
        shape = transform.inv(site["value"].detach()).shape
        sites.append(_Site(name, shape, transform, start, start + shape.numel()))
        start += shape.numel()
    with torch.no_grad():
        if kind is AutoNormal:
            pairs = [guide._get_loc_and_scale(s.name) for s in sites]
            loc = torch.cat([m.detach().reshape(-1) for m, _ in pairs])
            precision = torch.cat([s.detach().reshape(-1) for _, s in pairs]) ** -2
        elif kind is AutoDiagonalNormal:
            loc, precision = guide.loc.detach(), guide.scale.detach() ** -2
        else:  # chol(Σ) = scale[:, None] * scale_tril, also for laplace_approximation()'s buffers
            chol = guide.scale.detach()[..., None] * guide.scale_tril.detach()
            loc, precision = guide.loc.detach(), torch.cholesky_inverse(chol)
    if loc.numel() != start:
        raise ValueError(f"the guide's loc has {loc.numel()} entries, its sites {start}")
    return _Gaussian(kind, guide, loc.clone(), precision.clone(), sites)


# -- log p(D_e|θ) through the model -------------------------------------------------------------
class _ErasedLogLikelihood:
    """θ ↦ log p(D_e|θ): the model run under :func:`~pyro_unlearn.unlearn` with its latents
    conditioned on θ (unconstrained, flat, mapped through each site's bijection); differentiable
    by ``torch.func``."""

    def __init__(self, model, q: _Gaussian, args, kwargs, erased, plate) -> None:
        self.model = unlearn(model, erased=erased, plate=plate)
        self.q, self.args, self.kwargs = q, args, kwargs

    def trace(self, theta: torch.Tensor) -> Trace:
        # condition outside unlearn: unlearn sees the latents before they become observed
        conditioned = poutine.condition(self.model, data=self.q.values(theta))
        trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        trace.compute_log_prob(site_filter=lambda _, site: site["infer"].get(ERASED) is not None)
        return trace

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return erased_log_likelihood(self.trace(theta))[0]

    def check(self, theta: torch.Tensor) -> Trace:
        """One plain run, with the user's validation settings: clear errors before torch.func."""
        trace = self.trace(theta)
        uncovered = [
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        ]
        subsampled = subsampled_plates(trace)
        if subsampled:
            raise ValueError(
                f"plate(s) {subsampled} subsample: L-BUN needs log p(D_e|θ) as a "
                "deterministic function of θ; pass the full data without subsampling, or the "
                "erased data alone (erased=None)"
            )
        if uncovered:
            raise ValueError(
                f"the model samples {uncovered}, which the guide does not cover: log p(D_e|θ) "
                "must be a deterministic function of the guide's latents"
            )
        value = erased_log_likelihood(trace)[0]
        if not bool(torch.isfinite(value)):
            raise ValueError(f"log p(D_e|θ) = {float(value)} at the posterior mean μ_D")
        return trace


def _func(transform: Callable, *args):
    """Apply a torch.func transform to the model with validation off (argument checks are
    data-dependent control flow, which ``vmap`` refuses), with a clear error for randomness."""
    try:
        with pyro.validation_enabled(False):
            return transform(*args)
    except RuntimeError as e:
        if "random" not in str(e):
            raise
        raise ValueError(
            "the model draws random numbers at fixed θ (a subsampling plate, or a latent outside "
            "the guide): L-BUN needs log p(D_e|θ) as a deterministic function of θ; pass the "
            "full data without subsampling, or the erased data alone"
        ) from e


# -- curvature of −log p(D_e|θ) ----------------------------------------------------------------
def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _hessian_diagonal(
    loglik: Callable, theta: torch.Tensor, probes: int | None, chunk: int
) -> torch.Tensor:
    """diag ∇² log p(D_e|θ) from Hessian-vector products (forward-over-reverse), batched by
    ``vmap`` ``chunk`` at a time: exact from the P one-hot vectors (``probes=None``), or
    Hutchinson's E[z ⊙ Hz] over Rademacher z."""
    P = theta.numel()

    def hvp(v):
        return jvp(grad(loglik), (theta,), (v,))[1]

    total = torch.zeros_like(theta)
    for part in _chunks(P if probes is None else probes, chunk):
        n = part.stop - part.start
        if probes is None:
            index = torch.arange(part.start, part.stop, device=theta.device)
            v = torch.zeros(n, P, dtype=theta.dtype, device=theta.device)
            v[torch.arange(n), index] = 1.0
            total[part] = _func(vmap(hvp), v)[torch.arange(n), index]
        else:
            v = torch.randint(0, 2, (n, P), device=theta.device).to(theta.dtype) * 2 - 1
            total += (v * _func(vmap(hvp), v)).sum(0)
    return total if probes is None else total / probes


@dataclass
class _Output:
    """One erased observed site as seen by the GGN: its output f(θ) (Normal loc, Bernoulli or
    Categorical logits) at the erased elements, and A with A Aᵀ = −∇²_f log p(y|f) ⪰ 0."""

    name: str
    rows: torch.Tensor  # indices of the erased elements in the flattened batch
    classes: int
    factor: torch.Tensor  # (M, C, C)


def _unwrap(fn) -> tuple[Any, int]:
    reinterpreted = 0
    while isinstance(fn, torch.distributions.Independent):
        reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, reinterpreted


def _site_output(site) -> tuple[torch.Tensor, int]:
    """The GGN's output of a site, shaped (batch elements, classes)."""
    fn, _ = _unwrap(site["fn"])
    batch = site["value"].shape[: site["value"].dim() - fn.event_dim]
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc.expand(batch).reshape(-1, 1), 1
    if isinstance(fn, torch.distributions.Bernoulli):
        return fn.logits.expand(batch).reshape(-1, 1), 1
    if isinstance(fn, torch.distributions.Categorical):
        C = fn.logits.shape[-1]
        return fn.logits.expand(batch + (C,)).reshape(-1, C), C
    raise TypeError(
        f"curvature='ggn'/'ggn_diag' supports Normal (fixed scale), Bernoulli and Categorical "
        f"likelihoods; erased site {site['name']!r} is {type(fn).__name__}: use 'full' or 'diag'"
    )


def _erased_sites(trace: Trace) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample"
        and site["is_observed"]
        and site["infer"].get(ERASED) is not None
        and not site["infer"].get("_deterministic")
    ]


def _ggn_outputs(trace: Trace) -> list[_Output]:
    outputs = []
    for site in _erased_sites(trace):
        fn, reinterpreted = _unwrap(site["fn"])
        out, C = _site_output(site)
        batch = site["value"].shape[: site["value"].dim() - fn.event_dim]
        flag = site["infer"][ERASED]
        weight = torch.ones((), dtype=out.dtype, device=out.device)
        if flag is not True:  # broadcasts against log_prob: append the reinterpreted dims
            weight = weight * flag.reshape(flag.shape + (1,) * reinterpreted)
        for extra in (site["mask"], site["scale"]):
            if isinstance(extra, torch.Tensor):
                weight = weight * extra.reshape(extra.shape + (1,) * reinterpreted)
            elif extra is not None and extra is not True:
                weight = weight * float(extra)
        weight = weight.expand(batch).reshape(-1)
        rows = weight.nonzero().squeeze(-1)
        root = weight[rows].sqrt().to(out.dtype)
        f = out.detach()[rows]
        if isinstance(fn, torch.distributions.Normal):
            scale = fn.scale.detach().expand(batch).reshape(-1)[rows]
            factor = (root / scale).reshape(-1, 1, 1)
        elif isinstance(fn, torch.distributions.Bernoulli):
            p = torch.sigmoid(f[:, 0])
            factor = (root * (p * (1 - p)).sqrt()).reshape(-1, 1, 1)
        else:  # diag(p) − p pᵀ = A Aᵀ with A = diag(√p) − p √pᵀ (Σ p = 1)
            p = torch.softmax(f, -1)
            A = torch.diag_embed(p.sqrt()) - p[:, :, None] * p.sqrt()[:, None, :]
            factor = root[:, None, None] * A
        outputs.append(_Output(site["name"], rows, C, factor))
    return outputs


def _ggn(
    loglik: _ErasedLogLikelihood,
    theta: torch.Tensor,
    diagonal: bool,
    chunk: int,
) -> torch.Tensor:
    """The generalised Gauss–Newton Σ_m J_mᵀ A_m A_mᵀ J_m of −log p(D_e|θ) (or its diagonal):
    one vector-Jacobian product per erased output element and class, batched by ``vmap``; the
    diagonal never forms a P×P matrix (memory ``chunk``·P)."""
    with torch.no_grad():
        outputs = _ggn_outputs(loglik.trace(theta))

    def out_fn(t):
        sites = loglik.trace(t).nodes
        return tuple(_site_output(sites[o.name])[0][o.rows] for o in outputs)

    with pyro.validation_enabled(False):
        primal, pullback = vjp(out_fn, theta)
    P = theta.numel()
    total = torch.zeros(P if diagonal else (P, P), dtype=theta.dtype, device=theta.device)
    for i, o in enumerate(outputs):
        M, C = o.rows.numel(), o.classes
        for part in _chunks(M * C, chunk):
            k = torch.arange(part.start, part.stop, device=theta.device)
            m, c = k // C, k % C
            cot = [torch.zeros((len(k),) + p.shape, dtype=p.dtype, device=p.device) for p in primal]
            cot[i][torch.arange(len(k)), m] = o.factor[m, :, c]
            (rows,) = _func(vmap(pullback), tuple(cot))  # J_mᵀ A_m[:, c], (chunk, P)
            total += (rows**2).sum(0) if diagonal else rows.T @ rows
    return total


# -- θ* -------------------------------------------------------------------------------------------
@dataclass
class _Objective:
    """G(θ) = λ_L ½ (θ − μ_D)ᵀ Λ_D (θ − μ_D) + log p(D_e|θ), minimised (−G is the L-BUN
    objective up to a constant)."""

    q: _Gaussian
    lam: float
    loglik: _ErasedLogLikelihood

    def value_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = theta - self.q.loc
        Ld = self.q.precision_times(d)
        gradient, value = _func(grad_and_value(self.loglik), theta)
        return self.lam * 0.5 * (d @ Ld) + value, self.lam * Ld + gradient

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        d = theta - self.q.loc
        with pyro.validation_enabled(False):
            return self.lam * 0.5 * (d @ self.q.precision_times(d)) + self.loglik(theta)


def _tolerance(tol: float | None, dtype: torch.dtype) -> float:
    return math.sqrt(torch.finfo(dtype).eps) if tol is None else tol


def _newton(
    objective: _Objective,
    curvature: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    tol: float,
    repair: str | None,
) -> tuple[torch.Tensor, torch.Tensor, int, bool, bool]:
    """Newton (Gauss–Newton for the GGN) on G from μ_D with a backtracking line search. The
    Newton matrix is λ_L Λ_D − H_e(θ); where it is not positive definite G has no minimum there:
    NotNormalizableError, or with a repair the plain Newton step to the stationary point."""
    q, theta = objective.q, objective.q.loc.clone()
    concave, converged, it, H_at = True, False, 0, None
    for it in range(1, steps + 1):
        value, gradient = objective.value_and_grad(theta)
        H_at, H = theta, curvature(theta)
        A = objective.lam * q.precision - H
        chol, info = torch.linalg.cholesky_ex(0.5 * (A + A.T))
        if int(info) == 0:
            delta = -torch.cholesky_solve(gradient[:, None], chol)[:, 0]
            slope, t = float(gradient @ delta), 1.0
            while float(objective.value(theta + t * delta)) > float(value) + 1e-4 * t * slope:
                t *= 0.5
                if t < 1e-10:
                    return theta, H, it, False, concave
            delta = t * delta
        else:
            smallest = float(torch.linalg.eigvalsh(0.5 * (A + A.T))[0])
            if repair is None:
                raise NotNormalizableError(
                    f"λ_L Λ_D − H_e(θ) is not positive definite at Newton step {it} (smallest "
                    f"eigenvalue {smallest:.3g}): the L-BUN objective λ_L log q(θ|D) − "
                    f"log p(D_e|θ) has no maximum there, so q(θ|D)/p(D_e|θ) has no Laplace "
                    f"approximation; {_CAUSE} (a larger lam may help)"
                )
            concave = False
            delta = -torch.linalg.solve(A, gradient)
        theta = theta + delta
        if float(delta.abs().max()) <= tol * (1.0 + float(theta.abs().max())):
            converged = True
            break
    if H_at is None or not torch.equal(H_at, theta):
        H = curvature(theta)
    return theta, H, it, converged, concave


def _lbfgs(objective: _Objective, steps: int, tol: float) -> tuple[torch.Tensor, int, bool, float]:
    """L-BFGS on G from μ_D. Converged when the step the gradient implies under λ_L Λ_D's
    diagonal, max |∇G / (λ_L diag Λ_D)|, is within ``tol`` (1 + max |θ|): a gradient test that
    is attainable in float32, where G's values stop resolving progress long before ∇G = 0."""
    q = objective.q
    scale = objective.lam * (q.precision.diagonal() if q.dense else q.precision)
    theta = q.loc.clone().requires_grad_(True)
    optim = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=steps,
        tolerance_grad=tol * float(scale.min()) * (1.0 + float(q.loc.abs().max())),
        tolerance_change=torch.finfo(theta.dtype).eps,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        value, gradient = objective.value_and_grad(theta.detach())
        theta.grad = gradient
        return value

    optim.step(closure)
    theta = theta.detach()
    _, gradient = objective.value_and_grad(theta)
    step = float((gradient / scale).abs().max())
    iterations = optim.state[optim._params[0]].get("n_iter", 0)
    return theta, iterations, step <= tol * (1.0 + float(theta.abs().max())), step


# -- Λ̃: check, repair --------------------------------------------------------------------------
def _checked(
    precision: torch.Tensor, q: _Gaussian, repair: str | None, floor: float | None, what: str
) -> tuple[torch.Tensor, float, int, float | None]:
    """Λ̃ if positive definite; else NotNormalizableError, or (``repair="clip"``) Λ̃ with its
    eigenvalues (diagonal entries) below ``floor`` raised to it, with a UserWarning."""
    dense = precision.dim() == 2
    if dense:
        precision = 0.5 * (precision + precision.T)
        eigenvalues, vectors = torch.linalg.eigh(precision)
    else:
        eigenvalues = precision
    smallest = float(eigenvalues.min())
    ok = int(torch.linalg.cholesky_ex(precision)[1]) == 0 if dense else smallest > 0
    if ok and math.isfinite(smallest):
        return precision, smallest, 0, None
    name, names = ("eigenvalue", "eigenvalues") if dense else ("diagonal entry", "diagonal entries")
    if repair is None:
        raise NotNormalizableError(
            f"the unlearned precision Λ̃ = Λ_D − H_e(θ*) ({what}) is not positive definite "
            f"(smallest {name} {smallest:.3g}): q(θ|D)/p(D_e|θ) has no Laplace approximation; "
            f"{_CAUSE} Pass repair='clip' to clip the {names} to a floor (not a fix: the result "
            "is then no longer the division)"
        )
    if floor is None:  # relative to q(θ|D)'s own scale
        top = torch.linalg.eigvalsh(q.precision)[-1] if q.dense else q.precision.max()
        floor = 1e-6 * float(top)
    clipped = eigenvalues < floor
    eigenvalues = eigenvalues.clamp(min=floor)
    if dense:
        precision = (vectors * eigenvalues) @ vectors.T
        precision = 0.5 * (precision + precision.T)
    else:
        precision = eigenvalues
    count = int(clipped.sum())
    warnings.warn(
        f"L-BUN: Λ̃ = Λ_D − H_e(θ*) was not positive definite (smallest {name} {smallest:.3g}); "
        f"repair='clip' raised {count} {names if count != 1 else name} to the floor "
        f"{floor:.3g}. The returned guide is a repaired stand-in, NOT q(θ|D)/p(D_e|θ): the "
        "erased data may never have been in q(θ|D)",
        UserWarning,
        stacklevel=3,
    )
    return precision, smallest, count, floor


# -- the unlearned guide ------------------------------------------------------------------------
def _set_buffer(root: PyroModule, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for part in path:
        root = getattr(root, part)
    delattr(root, leaf)  # the PyroParam; a guide never run owns no param-store entry yet
    root.register_buffer(leaf, value)


def _gaussian_guide(q: _Gaussian, loc: torch.Tensor, precision: torch.Tensor, args, kwargs):
    """A fresh guide of q's kind holding N(loc, precision⁻¹) in buffers: the same parameter
    names as the original (and so the same auxiliary sites), but nothing in the param store."""
    source = q.source
    if q.kind is AutoNormal:
        guide = AutoNormal(source.model, create_plates=source.create_plates)
    else:
        guide = q.kind(source.model)
    guide._setup_prototype(*args, **kwargs)
    if q.kind is AutoMultivariateNormal:
        # chol(Σ̃) = diag(scale) · unit-lower scale_tril (UPSTREAM.md: the Laplace trap)
        chol = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(precision)))
        scale = chol.diagonal()
        buffers = {"loc": loc, "scale": scale, "scale_tril": chol / scale[:, None]}
        for name, value in buffers.items():
            delattr(guide, name)
            guide.register_buffer(name, value.clone())
    elif q.kind is AutoDiagonalNormal:
        for name, value in (("loc", loc), ("scale", precision.rsqrt())):
            delattr(guide, name)
            guide.register_buffer(name, value.clone())
    else:
        scale = precision.rsqrt()
        for s in q.sites:
            _set_buffer(guide.locs, s.name, loc[s.start : s.stop].reshape(s.shape).clone())
            _set_buffer(guide.scales, s.name, scale[s.start : s.stop].reshape(s.shape).clone())
    return guide


# -- the public function ------------------------------------------------------------------------
def _check_arguments(lam, curvature, repair, floor, steps, probes, chunk_size, q) -> float:
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise TypeError(f"lam must be a positive number, got {lam!r}") from None
    if not 0.0 < lam < math.inf:  # also rejects nan
        raise ValueError(f"lam (λ_L) must be a positive finite number, got {lam}")
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if not q.dense and curvature not in _DIAGONAL:
        raise ValueError(
            f"a {q.kind.__name__} has a diagonal precision, so a dense curvature={curvature!r} "
            "cannot be returned in its kind: use curvature='diag' or 'ggn_diag', or an "
            "AutoMultivariateNormal guide"
        )
    if repair not in (None, "clip"):
        raise ValueError(f"repair must be None or 'clip', got {repair!r}")
    if floor is not None and not (float(floor) > 0 and math.isfinite(float(floor))):
        raise ValueError(f"floor must be a positive number, got {floor}")
    for name, value in (("steps", steps), ("chunk_size", chunk_size)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if probes is not None and (curvature != "diag" or int(probes) < 1):
        raise ValueError(
            f"probes (Hutchinson's estimate) must be a positive integer with curvature='diag', "
            f"got probes={probes} with curvature={curvature!r}"
        )
    return lam


def laplace_unlearn(
    model: Callable,
    guide: AutoGuide | FrozenPosterior,
    *args,
    erased: Any = None,
    plate: str | Mapping[str, str] | None = None,
    lam: float = 1.0,
    curvature: str = "full",
    repair: str | None = None,
    floor: float | None = None,
    steps: int | None = None,
    tol: float | None = None,
    probes: int | None = None,
    chunk_size: int = 64,
    **kwargs,
) -> LaplaceUnlearnResult:
    r"""L-BUN: the Laplace approximation of q(θ|D)/p(D_e|θ) for a Gaussian q(θ|D) = N(μ_D, Λ_D⁻¹).

    .. math:: θ^* = \arg\max_θ\; λ_L \log q(θ|D) − \log p(D_e|θ), \qquad
              \tilde Λ = Λ_D + ∇^2_θ \log p(D_e|θ)\big|_{θ^*} = Λ_D − H_e(θ^*)

    As in the L-BUN paper (and DESIGN.md §1), λ_L > 0 weighs the *retention* term
    log q(θ|D) in the search for θ* only; the precision subtracts the erased data's full
    curvature. With λ_L = 1, a Gaussian q and a likelihood Gaussian in θ (Bayesian linear
    regression), the result is exactly q(θ|D)/p(D_e|θ)
    (:func:`~pyro_unlearn.exact.gaussian_linear_unlearn`). λ_L < 1 forgets more aggressively;
    λ_L > 1 holds θ* nearer μ_D, and is what makes the objective bounded when a *diagonal*
    Λ_D is outweighed by the erased data's correlated curvature (a network: the sine study).

    Everything lives in the guide's unconstrained space: θ is its flat latent vector, mapped to
    the model's sites through ``biject_to(support)``, and log p(D_e|θ) is read by running
    ``unlearn(model, erased=erased, plate=plate)`` with the latents conditioned on θ, exactly as
    the SVI losses do (``*args, **kwargs`` are the model's: the erased data alone with
    ``erased=None``, or the full data with the erased rows of ``plate``). The model must not
    subsample and must have no latent outside the guide.

    ``curvature`` is H_e's structure: ``"full"`` (the Hessian, ``torch.func.hessian``) or
    ``"ggn"`` (the generalised Gauss–Newton Jᵀ H_f J of the likelihood's output f: Normal loc
    with its scale held fixed, Bernoulli or Categorical logits), both dense P×P, found with
    Newton steps from μ_D (AutoMultivariateNormal only); or ``"diag"`` (the Hessian's diagonal
    from Hessian-vector products: exact from P of them, or Hutchinson's estimate from ``probes``
    Rademacher vectors) or ``"ggn_diag"`` (the GGN's diagonal, exact, one vector-Jacobian product
    per erased output and class), which never form a P×P matrix and use L-BFGS from μ_D.
    ``chunk_size`` products are batched at a time by ``vmap``; ``steps`` (default 20 Newton /
    500 L-BFGS iterations) and ``tol`` (default √eps of the dtype) bound the search.

    Λ̃ must be positive definite. If it is not, :class:`~pyro_unlearn.exact.NotNormalizableError`
    is raised, unless ``repair="clip"``: then eigenvalues (diagonal entries) below ``floor``
    (default 10⁻⁶ × the largest of Λ_D) are raised to it, a ``UserWarning`` says so and the
    result reports it. The original guide is never modified.

    Example (deleting the second of two points; the exact p(w|D_r) is N(1/2, 1/2))::

        >>> import pyro, torch, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoLaplaceApproximation, init_to_value
        >>> def model(x, y):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)
        >>> x = y = torch.tensor([1.0, 2.0])
        >>> map_guide = AutoLaplaceApproximation(  # at the MAP, 5/6, as if trained
        ...     model, init_loc_fn=init_to_value(values={"w": torch.tensor(5 / 6)}))
        >>> guide = map_guide.laplace_approximation(x, y)  # p(w|D) = N(5/6, 1/6)
        >>> result = laplace_unlearn(model, guide, x, y, erased=[1], plate="data")
        >>> result.theta_star, result.precision
        (tensor([0.5000]), tensor([[2.0000]]))
        >>> type(result.guide).__name__
        'AutoMultivariateNormal'
    """
    start = time.perf_counter()
    q = _read_gaussian(guide)
    lam = _check_arguments(lam, curvature, repair, floor, steps, probes, chunk_size, q)
    tol = _tolerance(tol, q.loc.dtype)
    loglik = _ErasedLogLikelihood(model, q, args, kwargs, erased, plate)
    with torch.no_grad():  # torch.func transforms differentiate regardless
        loglik.check(q.loc)
        objective = _Objective(q, lam, loglik)
        if curvature in _DIAGONAL:
            theta, iterations, converged, step = _lbfgs(objective, steps or 500, tol)
            if not bool(torch.isfinite(theta).all()):
                raise NotNormalizableError(
                    f"L-BFGS ran off to non-finite θ: the L-BUN objective has no maximum at "
                    f"lam={lam}; {_CAUSE}"
                )
            if not converged:
                warnings.warn(
                    f"L-BUN: L-BFGS stopped after {iterations} iterations, {step:.3g} away from "
                    "a stationary point by its gradient: θ* is not a maximum yet (raise steps), "
                    "or the objective is unbounded (raise lam)",
                    UserWarning,
                    stacklevel=2,
                )
            if curvature == "diag":
                H = -_hessian_diagonal(loglik, theta, probes, chunk_size)
            else:
                H = _ggn(loglik, theta, True, chunk_size)
            optimizer, concave = "lbfgs", None
            precision = q.precision - (torch.diag(H) if q.dense else H)
        else:
            if curvature == "full":

                def curvature_at(t):
                    H = -_func(hessian(loglik), t)
                    return 0.5 * (H + H.T)
            else:

                def curvature_at(t):
                    return _ggn(loglik, t, False, chunk_size)

            theta, H, iterations, converged, concave = _newton(
                objective, curvature_at, steps or 20, tol, repair
            )
            optimizer = "newton"
            precision = q.precision - H
        precision, smallest, clipped, used_floor = _checked(
            precision, q, repair, floor, f"curvature={curvature!r}, lam={lam}"
        )
        if concave is False and not clipped:  # Λ̃ is fine, but θ* is no maximum
            warnings.warn(
                f"L-BUN: λ_L Λ_D − H_e(θ) was not positive definite along the Newton path "
                f"(lam={lam}); repair='clip' took plain Newton steps, so θ* is a stationary "
                "point of the L-BUN objective, not its maximum",
                UserWarning,
                stacklevel=2,
            )
        new_guide = _gaussian_guide(q, theta, precision, args, kwargs)
    return LaplaceUnlearnResult(
        guide=new_guide,
        theta_star=theta,
        precision=precision,
        lam=lam,
        curvature=curvature,
        optimizer=optimizer,
        steps=int(iterations),
        converged=bool(converged),
        concave=concave,
        min_eigenvalue=smallest,
        repaired=clipped > 0,
        num_clipped=clipped,
        floor=used_floor,
        probes=probes if curvature == "diag" else None,
        seconds=time.perf_counter() - start,
    )
