"""Newton steps from Hessian-vector products alone: (H + δI)⁻¹ b by conjugate gradients or LiSSA."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from tqdm import tqdm

__all__ = [
    "SOLVERS",
    "HessianSolver",
    "IndefiniteHessianError",
    "MiniBatchHessian",
    "conjugate_gradients",
    "flatten",
    "largest_eigenvalue",
    "lissa",
    "unflatten",
]

#: The solvers :class:`HessianSolver` knows.
SOLVERS = ("cg", "lissa")


class IndefiniteHessianError(ValueError):
    """The Hessian of F_r(γ) = −ELBO(γ; D_r) (plus the damping) is not positive definite at γ:
    the Newton step has no minimum to aim at."""


def _indefinite(curvature: float, step: int, damping: float, where: str) -> IndefiniteHessianError:
    return IndefiniteHessianError(
        f"the Hessian H_r of F_r(γ) = −ELBO(γ; D_r) plus damping δ = {damping:g} is not positive "
        f"definite at Newton step {step}: {where} found curvature {curvature:.3g} ≤ 0. γ is not "
        "near a minimum of −ELBO on D_r (the erased data may dominate q(θ|D), or the Monte Carlo "
        "estimate is too noisy): pass damping > 0 (e.g. a few percent of H_r's scale), more "
        "num_particles, or unlearn with Trace_EUBO / ReverseKL instead"
    )


def flatten(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The tensors, flattened and concatenated into one vector of ``dtype``."""
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def unflatten(vector: torch.Tensor, like: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of :func:`flatten`: views of ``vector`` shaped as the tensors ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vector[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


class MiniBatchHessian:
    r"""v ↦ (H + δI) v for F(γ) = Σ_b w_b L_b(γ) / Σ_b w_b, by double backprop.

    With ``retain`` each mini-batch's gradient graph is kept for all products (one forward pass
    over the data); otherwise every product re-runs ``batch_loss`` on each mini-batch.

    Arguments:
        batch_loss: b ↦ (L_b(γ), w_b): one forward pass on mini-batch b; w_b is its share of the
            data, ``None`` when the loss is not scaled (allowed only for a single batch).
        batches: the mini-batches, re-iterable.
        tensors: γ, leaf tensors that require grad.
        damping: δ ≥ 0.
        retain: keep the gradient graphs between products.

    Attributes:
        gradient: ∇F(γ), flat.
        num_batches: the number of mini-batches.
        products: the Hessian-vector products taken so far.
    """

    def __init__(
        self,
        batch_loss: Callable[[Any], tuple[torch.Tensor, float | None]],
        batches: Iterable,
        tensors: list[torch.Tensor],
        damping: float,
        retain: bool,
    ) -> None:
        self.batch_loss, self.batches, self.tensors = batch_loss, batches, tensors
        self.damping, self.retain = damping, retain
        self.dtype = tensors[0].dtype
        self.products = 0
        self.graphs: list[tuple[torch.Tensor, ...]] = []
        gradient = torch.zeros(sum(t.numel() for t in tensors), dtype=self.dtype)
        gradient = gradient.to(tensors[0].device)
        weights, unscaled = [], 0
        for batch in batches:
            grads, weight = self._gradient(batch, create_graph=retain)
            weights.append(1.0 if weight is None else weight)
            unscaled += weight is None
            gradient += weights[-1] * flatten((g.detach() for g in grads), self.dtype)
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
        self.num_batches = len(weights)
        self.gradient = gradient / total

    def _gradient(self, batch: Any, create_graph: bool) -> tuple[tuple[torch.Tensor, ...], Any]:
        loss, weight = self.batch_loss(batch)
        grads = torch.autograd.grad(
            loss, self.tensors, create_graph=create_graph, allow_unused=True, materialize_grads=True
        )
        return grads, weight

    def _product(self, grads: tuple[torch.Tensor, ...], vector: torch.Tensor) -> torch.Tensor:
        pairs = zip(grads, unflatten(vector, self.tensors), strict=True)
        used = [(g, v) for g, v in pairs if g.requires_grad]
        if not used:  # the loss is linear in γ
            return torch.zeros_like(vector)
        out = torch.autograd.grad(
            [g for g, _ in used],
            self.tensors,
            grad_outputs=[v for _, v in used],
            retain_graph=self.retain,
            allow_unused=True,
            materialize_grads=True,
        )
        return flatten((o.detach() for o in out), self.dtype)

    def _batch_grads(self) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        if self.retain:
            yield from enumerate(self.graphs)
        else:
            for index, batch in enumerate(self.batches):
                yield index, self._gradient(batch, create_graph=True)[0]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """(H + δI) v over all mini-batches."""
        self.products += 1
        total = torch.zeros_like(vector)
        for index, grads in self._batch_grads():
            total += self.weights[index] * self._product(grads, vector)
        return total + self.damping * vector

    def per_batch(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """Endlessly, mini-batch after mini-batch: v ↦ (H_b + δI) v, with H_b the Hessian of
        mini-batch b's estimate L_b of F (LiSSA's stochastic products)."""
        while True:
            for _, grads in self._batch_grads():

                def product(vector, grads=grads):
                    self.products += 1
                    return self._product(grads, vector) + self.damping * vector

                yield product


def conjugate_gradients(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    tol: float,
    max_iter: int,
    *,
    step: int = 1,
    damping: float = 0.0,
    bar: tqdm | None = None,
) -> tuple[torch.Tensor, int, float]:
    r"""Solve A x = b from x = 0 by conjugate gradients, A = H + δI given by its products.

    Arguments:
        hvp: v ↦ A v, A symmetric.
        b: the right-hand side.
        tol: stop once ‖A x − b‖ / ‖b‖ ≤ ``tol``.
        max_iter: the most products to take.
        step, damping: the Newton step and δ, for the error message.
        bar: a progress bar to advance by one per product.

    Returns:
        ``(x, iterations, relative residual)``.

    Raises:
        IndefiniteHessianError: when pᵀ A p ≤ 0 for a search direction p.

    References:
        M. R. Hestenes, E. Stiefel. Methods of Conjugate Gradients for Solving Linear Systems.
        Journal of Research of the National Bureau of Standards, 1952.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = A @ torch.ones(2, dtype=A.dtype)
        >>> x, iterations, residual = conjugate_gradients(lambda v: A @ v, b, 1e-12, 10)
        >>> [round(v, 9) for v in x.tolist()], iterations
        ([1.0, 1.0], 2)
    """
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
        if bar is not None:
            bar.update()
        curvature = p @ Hp
        if not bool(curvature > 0):
            raise _indefinite(float(curvature / (p @ p)), step, damping, "conjugate gradients")
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * Hp
        rr_new = r @ r
        residual = float(rr_new.sqrt()) / norm_b
        if bar is not None:
            bar.set_postfix(step=step, residual=f"{residual:.2e}")
        if residual <= tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, iterations, residual


def largest_eigenvalue(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    like: torch.Tensor,
    iterations: int,
    *,
    step: int = 1,
    damping: float = 0.0,
) -> float:
    """λ_max of a symmetric positive definite A by power iteration from a fixed start.

    Arguments:
        hvp: v ↦ A v.
        like: a vector of A's size, dtype and device.
        iterations: power iterations.
        step, damping: the Newton step and δ, for the error message.

    Returns:
        The Rayleigh quotient vᵀ A v of the last iterate.

    Raises:
        IndefiniteHessianError: when the estimate is not positive.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 5.0], dtype=torch.float64))
        >>> round(largest_eigenvalue(lambda v: A @ v, torch.zeros(2, dtype=A.dtype), 50), 6)
        5.0
    """
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


def lissa(
    products: Iterable[Callable[[torch.Tensor], torch.Tensor]],
    b: torch.Tensor,
    scale: float,
    depth: int,
    *,
    step: int = 1,
    damping: float = 0.0,
    bar: tqdm | None = None,
) -> torch.Tensor:
    r"""x ≈ A⁻¹ b by the LiSSA recursion, from stochastic products with A = H + δI.

    .. math:: x_0 = b, \qquad x_j = b + x_{j-1} - A_j x_{j-1} / s, \qquad A^{-1} b ≈ x_J / s,

    with A_j the j-th of ``products`` (e.g. one mini-batch's Hessian each) and s > λ_max(A) / 2.

    Arguments:
        products: the stochastic products v ↦ A_j v, taken in turn.
        b: the right-hand side.
        scale: s.
        depth: J, the recursions.
        step, damping: the Newton step and δ, for the error message.
        bar: a progress bar to advance by one per recursion.

    Returns:
        x_J / s.

    Raises:
        IndefiniteHessianError: when the recursion diverges.

    References:
        N. Agarwal, B. Bullins, E. Hazan. Second-Order Stochastic Optimization for Machine
        Learning in Linear Time. JMLR 2017.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> from itertools import repeat
        >>> lissa(repeat(lambda v: A @ v), torch.ones(2, dtype=A.dtype), 2.0, 200)
        tensor([1.0000, 0.5000], dtype=torch.float64)
    """
    x = b.clone()
    for j, product in zip(range(depth), products, strict=False):
        x = b + x - product(x) / scale
        if bar is not None:
            bar.update()
        if not bool(torch.isfinite(x).all()):
            raise IndefiniteHessianError(
                f"LiSSA diverged at recursion {j + 1} of Newton step {step}: lissa_scale = "
                f"{scale:.3g} is below half of H_r's largest eigenvalue, or H_r + δI (δ = "
                f"{damping:g}) is not positive definite; raise lissa_scale or damping, or use "
                "solver='cg'"
            )
    return x / scale


class HessianSolver:
    """(H + δI)⁻¹ b for a :class:`MiniBatchHessian`, by CG or LiSSA, recording the iterations
    and relative residuals ‖(H + δI) x − b‖ / ‖b‖ of every solve.

    Arguments:
        method: ``"cg"`` or ``"lissa"``.
        damping: δ (for the error messages; the Hessian adds it).
        cg_tol: CG's relative tolerance (``None``: √eps of the dtype).
        cg_max_iter: CG's most iterations (``None``: twice the number of parameters).
        lissa_scale: LiSSA's scale (``None``: 1.1 × a 20-step power-iteration estimate of
            λ_max, found on the first solve).
        lissa_depth: LiSSA's recursions.

    Attributes:
        iterations: CG iterations (LiSSA recursions) of each solve.
        residuals: the relative residual of each solve.
        converged: whether every solve met its tolerance (CG: ``cg_tol``; LiSSA: 0.1).
    """

    def __init__(
        self,
        method: str,
        damping: float,
        cg_tol: float | None,
        cg_max_iter: int | None,
        lissa_scale: float | None,
        lissa_depth: int,
    ) -> None:
        if method not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {method!r}")
        self.method, self.damping = method, damping
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter
        self.lissa_scale, self.lissa_depth = lissa_scale, lissa_depth
        self.iterations: list[int] = []
        self.residuals: list[float] = []
        self.converged = True

    def __call__(
        self, hessian: MiniBatchHessian, b: torch.Tensor, step: int, bar: tqdm | None = None
    ) -> torch.Tensor:
        """x ≈ (H + δI)⁻¹ b; warns when the solve misses its tolerance."""
        if self.method == "cg":
            tol = math.sqrt(torch.finfo(b.dtype).eps) if self.cg_tol is None else self.cg_tol
            max_iter = self.cg_max_iter or 2 * b.numel()
            x, its, residual = conjugate_gradients(
                hessian, b, tol, max_iter, step=step, damping=self.damping, bar=bar
            )
            hint = f"conjugate gradients stopped after {its} iterations at relative residual "
            hint += f"{residual:.3g} > cg_tol = {tol:.3g} (Newton step {step}); raise "
            hint += "cg_max_iter, or add damping"
        else:
            x, its, residual = self._lissa(hessian, b, step, bar)
            tol = 0.1
            hint = f"LiSSA's solve is {residual:.3g} off (relative residual) after {its} "
            hint += f"recursions at lissa_scale = {self.lissa_scale:.3g} (Newton step {step}); "
            hint += "raise lissa_depth or damping, or use solver='cg'"
        if residual > tol:
            self.converged = False
            warnings.warn(f"BIF: {hint}", UserWarning, stacklevel=3)
        self.iterations.append(int(its))
        self.residuals.append(float(residual))
        return x

    def _lissa(
        self, hessian: MiniBatchHessian, b: torch.Tensor, step: int, bar: tqdm | None
    ) -> tuple[torch.Tensor, int, float]:
        if self.lissa_scale is None:
            top = largest_eigenvalue(hessian, b, 20, step=step, damping=self.damping)
            self.lissa_scale = 1.1 * top
        x = lissa(
            hessian.per_batch(),
            b,
            self.lissa_scale,
            self.lissa_depth,
            step=step,
            damping=self.damping,
            bar=bar,
        )
        norm_b = torch.linalg.vector_norm(b)
        misfit = torch.linalg.vector_norm(hessian(x) - b)
        residual = float(misfit / norm_b) if bool(norm_b > 0) else 0.0
        return x, self.lissa_depth, residual
