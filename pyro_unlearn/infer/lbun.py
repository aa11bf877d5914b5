"""The L-BUN search for θ* (Newton or L-BFGS) and the check (or repair) of Λ̃."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyro
import torch

from ..exact import NotNormalizableError

if TYPE_CHECKING:
    from ..trust import Caveats
    from .laplace import LaplaceUnlearnResult

__all__ = ["LBUNObjective", "check_precision", "lbfgs", "lbun_caveats", "newton"]

#: Why Λ̃ or θ* may not exist, for the error messages.
CAUSE = (
    "the erased data carry more curvature than q(θ|D) holds — were they ever in the posterior, "
    "and is q(θ|D) accurate where they pull θ?"
)


@dataclass
class LBUNObjective:
    r"""The L-BUN objective, as the function minimised:

    .. math:: G(θ) = λ_L \tfrac12 (θ − μ_D)^\top Λ_D (θ − μ_D) + \log p(D_e|θ),

    −G being λ_L log q(θ|D) − log p(D_e|θ) up to a constant, q(θ|D) = N(μ_D, Λ_D⁻¹).

    Arguments:
        loc: μ_D (P,).
        precision: Λ_D, (P, P) or its diagonal (P,).
        retention: λ_L > 0.
        loglik: θ ↦ log p(D_e|θ).

    References:
        A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of Bayesian
        Unlearning. ICML 2022 Workshop on Updatable Machine Learning (arXiv:2207.03227).

    Example:
        >>> objective = LBUNObjective(torch.zeros(1), torch.ones(1), 2.0, lambda t: -t.sum())
        >>> objective.value(torch.ones(1))  # 2 · ½ · 1 − 1
        tensor(0.)
    """

    loc: torch.Tensor
    precision: torch.Tensor
    retention: float
    loglik: Callable[[torch.Tensor], torch.Tensor]

    @property
    def dense(self) -> bool:
        """Whether Λ_D is a (P, P) matrix rather than its diagonal."""
        return self.precision.dim() == 2

    def precision_times(self, v: torch.Tensor) -> torch.Tensor:
        """Λ_D v."""
        return self.precision @ v if self.dense else self.precision * v

    def value_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G(θ) and ∇G(θ) (``loglik`` must have ``value_and_grad``)."""
        d = theta - self.loc
        Ld = self.precision_times(d)
        value, gradient = self.loglik.value_and_grad(theta)
        return self.retention * 0.5 * (d @ Ld) + value, self.retention * Ld + gradient

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """G(θ)."""
        d = theta - self.loc
        with pyro.validation_enabled(False):
            return self.retention * 0.5 * (d @ self.precision_times(d)) + self.loglik(theta)


def newton(
    objective: LBUNObjective,
    curvature: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    tol: float,
    repair: str | None,
) -> tuple[torch.Tensor, torch.Tensor, int, bool, bool]:
    """Newton (Gauss–Newton for the GGN) on G from μ_D with a backtracking line search. The
    Newton matrix is λ_L Λ_D − H_e(θ); where it is not positive definite G has no minimum there:
    NotNormalizableError, or with a repair the plain Newton step to the stationary point."""
    q, theta = objective, objective.loc.clone()
    concave, converged, it, H_at = True, False, 0, None
    for it in range(1, steps + 1):
        value, gradient = objective.value_and_grad(theta)
        H_at, H = theta, curvature(theta)
        A = objective.retention * q.precision - H
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
                    f"approximation; {CAUSE} (a larger retention may help)"
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


def lbfgs(
    objective: LBUNObjective, steps: int, tol: float
) -> tuple[torch.Tensor, int, bool, float]:
    """L-BFGS on G from μ_D. Converged when the step the gradient implies under λ_L Λ_D's
    diagonal, max |∇G / (λ_L diag Λ_D)|, is within ``tol`` (1 + max |θ|): a gradient test that
    is attainable in float32, where G's values stop resolving progress long before ∇G = 0."""
    q = objective
    scale = objective.retention * (q.precision.diagonal() if q.dense else q.precision)
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
        if not (bool(torch.isfinite(value)) and bool(torch.isfinite(gradient).all())):
            raise _unbounded(objective, theta.detach())
        theta.grad = gradient
        return value

    try:
        optim.step(closure)
    except RuntimeError as e:  # the line search's step overflowed the dtype: G fell without end
        if "overflow" not in str(e):
            raise
        raise _unbounded(objective, theta.detach()) from e
    theta = theta.detach()
    _, gradient = objective.value_and_grad(theta)
    step = float((gradient / scale).abs().max())
    iterations = optim.state[optim._params[0]].get("n_iter", 0)
    return theta, iterations, step <= tol * (1.0 + float(theta.abs().max())), step


def _unbounded(objective: LBUNObjective, theta: torch.Tensor) -> NotNormalizableError:
    """The error for an L-BUN objective that L-BFGS followed off to a non-finite value: −G has
    no maximum, naming the latent sites (when ``objective.loglik`` has a ``layout``) that ran
    farthest from μ_D in q(θ|D)'s standard deviations."""
    scale = objective.precision.diagonal() if objective.dense else objective.precision
    distance = ((theta - objective.loc).abs() * scale.sqrt()).nan_to_num(float("inf"))
    far = [int(i) for i in distance.argsort(descending=True)[:3]]
    layout = getattr(objective.loglik, "layout", None)
    where = f"θ entries {far}"
    if layout is not None:
        names = sorted({s.name for s in layout.sites for i in far if s.start <= i < s.stop})
        where = f"sites {names}"
    return NotNormalizableError(
        f"the L-BUN objective λ_L log q(θ|D) − log p(D_e|θ) has no maximum: L-BFGS from "
        f"μ_D ran off to a non-finite value, {where} farthest from μ_D. Removing the erased "
        "data can drive their likelihood to zero (along directions only they inform, or a "
        "noise scale to 0) faster than q(θ|D)'s Gaussian tails penalise it, so "
        f"q(θ|D)/p(D_e|θ) has no Laplace approximation; {CAUSE} Try a larger retention, or "
        "forget(..., method='auto')"
    )


# -- Λ̃: check, repair --------------------------------------------------------------------------
def check_precision(
    precision: torch.Tensor, prior: torch.Tensor, repair: str | None, floor: float | None, what: str
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
            f"{CAUSE} Pass repair='clip' to clip the {names} to a floor (not a fix: the result "
            "is then no longer the division)"
        )
    if floor is None:  # relative to q(θ|D)'s own scale
        top = torch.linalg.eigvalsh(prior)[-1] if prior.dim() == 2 else prior.max()
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


def lbun_caveats(result: LaplaceUnlearnResult) -> Caveats:
    """What L-BUN cannot vouch for, whatever the trust diagnostics say: a repaired Λ̃ (the
    result is a stand-in: ``"retrain"``), a θ* that missed its tolerance or is no maximum (at
    most ``"approximate"``).

    Arguments:
        result: a :class:`~pyro_unlearn.LaplaceUnlearnResult`.

    Returns:
        The :class:`~pyro_unlearn.trust.Caveats` of
        :func:`~pyro_unlearn.trust.cap_verdict`.

    Example:
        >>> from types import SimpleNamespace
        >>> done = SimpleNamespace(repaired=False, converged=False, steps=20, optimizer="newton",
        ...                        concave=True)
        >>> lbun_caveats(done).approximate
        ['θ* missed its tolerance after 20 newton steps']
    """
    from ..trust import Caveats  # trust imports this package

    retrain, approximate = [], []
    if result.repaired:
        retrain.append(
            f"Λ̃ = Λ_D − H_e(θ*) was not positive definite (smallest {result.min_eigenvalue:.3g}) "
            f"and repair='clip' raised {result.num_clipped} to {result.floor:.3g}: a stand-in, "
            "not q(θ|D)/p(D_e|θ)"
        )
    if not result.converged:
        approximate.append(f"θ* missed its tolerance after {result.steps} {result.optimizer} steps")
    if result.concave is False:
        approximate.append("λ_L Λ_D − H_e(θ) was indefinite on the Newton path: θ* is no maximum")
    return Caveats(retrain=retrain, approximate=approximate)
