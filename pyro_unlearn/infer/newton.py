"""Newton steps from Hessian-vector products alone: (H + δI)⁻¹ b by conjugate gradients or LiSSA."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from .hessian import MiniBatchHessian, flatten, unflatten

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
