"""The block Newton step of L-CODEC: the training objective as a function of a block of
parameters, its Hessian by vmapped Hessian-vector products, and the (ε, δ) noise scale."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from .slices import Slice

__all__ = ["LossFn", "Objective", "newton_step", "noise_scale"]

#: ``loss_fn(output, target)`` → one loss per sample.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def noise_scale(gamma: float, epsilon: float, delta: float) -> float:
    """σ = (γ/ε) √(2 ln(1.25/δ)), the Gaussian mechanism's scale for an (ε, δ) certified removal.

    Arguments:
        gamma: γ, a bound on ‖w' − w*(D_r)‖ between the Newton estimate and the retrained
            minimiser (from the loss's Lipschitz and strong-convexity constants).
        epsilon, delta: the privacy parameters ε > 0 and δ ∈ (0, 1).

    Returns:
        σ, the standard deviation of the Gaussian noise added to the block.

    References:
        C. Guo, T. Goldstein, A. Hannun, L. van der Maaten. Certified Data Removal from Machine
        Learning Models. ICML 2020.

        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022.

    Example:
        >>> round(noise_scale(1e-3, 0.1, 0.01), 5)
        0.03108
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return gamma / epsilon * math.sqrt(2 * math.log(1.25 / delta))


@dataclass
class _Part:
    name: str  # parameter name
    rows: torch.Tensor | None  # rows of the parameter in the block; None: all of it
    numel: int
    shape: torch.Size


class Objective:
    """F(w) = (1/n) Σ_i ℓ(w; z_i) + (λ_wd/2) ‖w‖² through ``functional_call`` on ``model``, as a
    function of all trainable parameters or of a block of rows of some of them.

    Arguments:
        model: the network (its current parameters are ŵ).
        loss_fn: ``loss_fn(output, target)`` → one loss per sample.
        weight_decay: λ_wd.
        batch_size: rows of the data per pass (Hessians and gradients are summed over batches).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, weight_decay: float, batch_size: int):
        self.model, self.loss_fn = model, loss_fn
        self.weight_decay, self.batch_size = weight_decay, batch_size
        named = dict(model.named_parameters())
        self.trainable = [k for k, v in named.items() if v.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameters")
        self.fixed = {k: v.detach() for k, v in named.items() if not v.requires_grad}
        self.fixed.update({k: v for k, v in model.named_buffers()})

    def params(self) -> dict[str, torch.Tensor]:
        """The current trainable values, copied (a later commit must not change them)."""
        named = dict(self.model.named_parameters())
        return {k: named[k].detach().clone() for k in self.trainable}

    def losses(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        out = functional_call(self.model, {**self.fixed, **params}, (x,))
        return self.loss_fn(out, y)

    def objective(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        value = self.losses(params, x, y).mean()
        if self.weight_decay:
            value = value + 0.5 * self.weight_decay * sum(p.square().sum() for p in params.values())
        return value

    def batches(self, n: int) -> Iterator[tuple[int, int]]:
        for start in range(0, n, self.batch_size):
            yield start, min(n, start + self.batch_size)

    # blocks
    def parts(self, slices: list[Slice] | None) -> list[_Part]:
        named = dict(self.model.named_parameters())
        if slices is None:
            return [_Part(k, None, named[k].numel(), named[k].shape) for k in self.trainable]
        rows: dict[str, list[int]] = {}
        for s in slices:
            for kind in ("weight", "bias"):
                name = f"{s.layer}.{kind}" if s.layer else kind
                if name in named and named[name].requires_grad:
                    rows.setdefault(name, []).append(s.index)
        parts = []
        for name, idx in rows.items():
            idx = torch.tensor(sorted(set(idx)), device=named[name].device)
            shape = (len(idx), *named[name].shape[1:])
            parts.append(_Part(name, idx, math.prod(shape), torch.Size(shape)))
        return parts

    def flat(self, params: dict[str, torch.Tensor], parts: list[_Part]) -> torch.Tensor:
        pieces = [
            (params[p.name] if p.rows is None else params[p.name].index_select(0, p.rows))
            for p in parts
        ]
        return torch.cat([t.reshape(-1) for t in pieces])

    def scatter(
        self, params: dict[str, torch.Tensor], parts: list[_Part], theta: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out = dict(params)
        start = 0
        for p in parts:
            piece = theta[start : start + p.numel].reshape(p.shape)
            start += p.numel
            out[p.name] = piece if p.rows is None else out[p.name].index_copy(0, p.rows, piece)
        return out

    def block_objective(
        self, params: dict[str, torch.Tensor], parts: list[_Part]
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        def f(theta, x, y):
            return self.objective(self.scatter(params, parts, theta), x, y)

        return f

    def hessian(
        self,
        f: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        theta: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        """∇²f(θ) over the data (x, y), batch by batch: Hessian-vector products (forward over
        reverse mode) vmapped over ``chunk`` columns of the identity at a time."""
        n = x.shape[0]
        eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
        H = theta.new_zeros(theta.numel(), theta.numel())
        for a, b in self.batches(n):
            xb, yb = x[a:b], y[a:b]

            def hvp(v, xb=xb, yb=yb):
                return jvp(lambda t: grad(f)(t, xb, yb), (theta,), (v,))[1]

            with warnings.catch_warnings():
                # torch loads its forward-mode decompositions with torch.jit.script, once
                warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
                H += (b - a) / n * vmap(hvp, chunk_size=chunk)(eye)
        return H

    def gradient(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for a, b in self.batches(n):
            g = grad(self.objective)(params, x[a:b], y[a:b])
            for k in total:
                total[k] += (b - a) / n * g[k]
        return total


def newton_step(
    objective: Objective,
    params: dict[str, torch.Tensor],
    parts: list,
    x: torch.Tensor,
    y: torch.Tensor,
    index: int,
    *,
    damping: float = 0.0,
    hessian_chunk: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""The Newton step towards the minimiser of F on D_r = D \ {z}, on the block P only.

    .. math:: H'_P = \frac{n H_P − H_P(z)}{n − 1} + δ I, \qquad
              Δw_P = \frac{H'^{-1}_P ∇_P f(ŵ; z)}{n − 1}

    H_P = ∇²_P F(ŵ) and H_P(z) = ∇²_P f(ŵ; z). H'_P is the Hessian of F_r on the block; at a
    minimiser of F the gradient of F_r is −∇f(ŵ; z)/(n − 1). A H'_P that is not positive
    definite (non-convex networks) is shifted by a multiple of the identity so that its smallest
    eigenvalue becomes |λ_min| (Nocedal & Wright, §3.4): a floor near 0 would blow the step up.

    Arguments:
        objective: F at ŵ.
        params: ŵ, from ``objective.params()``.
        parts: the block, from ``objective.parts(slices)``.
        x, y: the data D; ``index`` the row of z.
        damping: δ, added to the diagonal of H'_P.
        hessian_chunk: Hessian columns computed at once.

    Returns:
        the block w_P (flat), the step Δw_P and the shift added to H'_P (0 when none was needed).

    References:
        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022.

    Example:
        >>> import torch.nn.functional as F
        >>> net = nn.Linear(2, 2)
        >>> loss = lambda out, t: F.cross_entropy(out, t, reduction="none")
        >>> objective = Objective(net, loss, weight_decay=1.0, batch_size=64)
        >>> params = objective.params()
        >>> x, y = torch.randn(10, 2), torch.randint(0, 2, (10,))
        >>> theta, step, shift = newton_step(objective, params, objective.parts(None), x, y, 0)
        >>> theta.shape, step.shape, shift  # weight decay 1: H'_P is positive definite
        (torch.Size([6]), torch.Size([6]), 0.0)
    """
    n = x.shape[0]
    f = objective.block_objective(params, parts)
    theta = objective.flat(params, parts)
    xz, yz = x[index : index + 1], y[index : index + 1]
    chunk = min(theta.numel(), hessian_chunk)
    H = objective.hessian(f, theta, x, y, chunk)
    Hz = objective.hessian(f, theta, xz, yz, chunk)
    gz = grad(f)(theta, xz, yz)
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    Hr = (n * H - Hz) / (n - 1)
    Hr = 0.5 * (Hr + Hr.T) + damping * eye
    chol, info = torch.linalg.cholesky_ex(Hr)
    shift = 0.0
    if int(info) != 0:
        evals = torch.linalg.eigvalsh(Hr)
        floor = torch.maximum(evals[0].abs(), 1e-6 * evals.abs().max()).clamp_min(1e-12)
        shift = float(floor - evals[0])
        chol = torch.linalg.cholesky(Hr + shift * eye)
    step = torch.cholesky_solve(gz[:, None], chol)[:, 0] / (n - 1)
    return theta, step, shift
