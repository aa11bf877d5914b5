"""Deep unlearning of point-estimate networks by L-CODEC block selection and a block Newton step
(Mehta et al. 2022, "Deep unlearning via randomized conditionally independent Hessians").

A network ŵ minimises F(w) = (1/n) Σ_i f(w; z_i) on D, f(w; z) = ℓ(w; z) + (λ_wd/2) ‖w‖². To
remove z ∈ D:

1. **Perturb**: m copies x_z + ξ_k, ξ_k ~ N(0, σ²), of the input of z go through the network;
   forward hooks record every *slice*'s activation (a Linear layer's output unit j ↔ its weight
   row W[j, :] and bias b[j]; a Conv layer's filter j ↔ W[j] and b[j], activation averaged over
   positions) next to the loss ℓ(w; (x_z + ξ_k, y_z)).
2. **Select** the block P of slices: L-FOCI (:func:`pyro_unlearn.codec.foci`) on (loss,
   activations), "random" (as many slices, uniformly) or "all" (every parameter: the full
   Hessian update of Sekhari et al. 2021).
3. **Block Newton step** on P only, everything else unchanged::

       H'_P = (n H_P − H_P(z)) / (n − 1),      H_P = ∇²_P F(ŵ),  H_P(z) = ∇²_P f(ŵ; z)
       w_P ← w_P + H'_P⁻¹ ∇_P f(ŵ; z) / (n − 1)

   H'_P is the Hessian of F_r(w) = (1/(n−1)) Σ_{i≠z} f(w; z_i) on the block, and at a minimiser
   of F the gradient of F_r is −∇f(ŵ; z)/(n − 1): the step is Newton's step towards the
   minimiser of the loss on D_r = D \\ {z}. A non-positive-definite H'_P (non-convex networks) is
   shifted by a multiple of the identity, to smallest eigenvalue |λ_min| (the shift is reported).
4. **Noise** (optional): w_P ← w_P + N(0, σ_ε² I), σ_ε = (γ/ε) √(2 ln(1.25/δ)) for an (ε, δ)
   certified removal, γ a bound on the distance between the Newton estimate and the retrained
   minimiser (from the loss's Lipschitz and strong-convexity constants; weight decay gives the
   strong convexity).

The residual gradient norm ‖∇F_r(w')‖ on D_r measures what the step left undone.

The input model is never modified: :func:`remove` and :func:`remove_sequentially` work on a deep
copy, and a removal that fails (an error) or is rejected (``max_validation_drop``) leaves that copy
as it was before the removal.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from tqdm import tqdm

from .codec import foci

__all__ = [
    "SELECTIONS",
    "RemovalResult",
    "SequentialRemovalResult",
    "Slice",
    "collect_activations",
    "noise_scale",
    "remove",
    "remove_sequentially",
]

#: How the block P is chosen.
SELECTIONS = ("foci", "random", "all")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Validation = tuple[torch.Tensor, torch.Tensor] | Callable[[nn.Module], float]


@dataclass(frozen=True)
class Slice:
    """Output unit (Linear) or filter (Conv) ``index`` of the layer named ``layer``: the
    parameters ``weight[index]`` and ``bias[index]``."""

    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.layer or '<model>'}[{self.index}]"


@dataclass
class RemovalResult:
    """What :func:`remove` returns (and :func:`remove_sequentially` records for each request).

    Attributes:
        model: the updated copy of the network (``None`` in a sequential run's steps).
        index: the removed sample's row in the data passed in.
        selection: "foci", "random" or "all".
        selected: the slices of the block P (empty for "all", which is every parameter).
        block_size: the number of parameters in P.
        coefficients: L-FOCI's T_n of each selected slice given the previous ones (FOCI only).
        step_norm: ‖Δw_P‖ of the Newton step (before noise).
        noise_scale: σ_ε of the added Gaussian noise (0 when ε is None).
        hessian_shift: the multiple of the identity added to H'_P to make it positive definite
            (beyond ``damping``); 0 when it already was.
        removed_loss: ℓ(w; z) before and after the removal (equal when it was discarded).
        removed_grad_norm: ‖∇_w ℓ(w'; z)‖ after the removal (the paper's sample gradient norm).
        residual_grad_norm: ‖∇F_r(w')‖ over all parameters on D_r (None if not computed).
        validation: the validation score before and after (None without validation data).
        applied: whether the update was kept.
        retrain_advised: the validation score dropped more than ``max_validation_drop``: the
            update was discarded (the model is unchanged) and retraining without z is advised.
        seconds: wall time of the whole removal; ``seconds_selection`` of steps 1–2.
    """

    model: nn.Module | None
    index: int
    selection: str
    selected: list[Slice]
    block_size: int
    coefficients: list[float]
    step_norm: float
    noise_scale: float
    hessian_shift: float
    removed_loss: tuple[float, float]
    removed_grad_norm: float
    residual_grad_norm: float | None
    validation: tuple[float, float] | None
    applied: bool
    retrain_advised: bool
    seconds: float
    seconds_selection: float


@dataclass
class SequentialRemovalResult:
    """What :func:`remove_sequentially` returns.

    Attributes:
        model: the copy of the network with every accepted removal applied.
        steps: one :class:`RemovalResult` per request, in order (their ``model`` is None).
        removed: the requested indices (rows of the original data) that were removed.
        skipped: those whose removal was discarded (``retrain_advised``).
        seconds: total wall time.
    """

    model: nn.Module
    steps: list[RemovalResult] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def retrain_advised(self) -> bool:
        """Whether any removal was skipped: the model still carries those samples."""
        return bool(self.skipped)


def noise_scale(gamma: float, epsilon: float, delta: float) -> float:
    """σ = (γ/ε) √(2 ln(1.25/δ)), the Gaussian mechanism's scale for an (ε, δ) certified removal.

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


# -- the network's slices and activations ---------------------------------------------------
def _check_point_estimate(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if getattr(module, "_pyro_samples", None):
            raise TypeError(
                f"module {name or 'model'!r} has PyroSample attributes "
                f"{sorted(module._pyro_samples)}: L-CODEC unlearns point-estimate networks; "
                "for a Bayesian network use the variational losses"
            )
        if getattr(module, "_pyro_params", None):
            raise TypeError(
                f"module {name or 'model'!r} has PyroParam attributes "
                f"{sorted(module._pyro_params)} (held in Pyro's param store): use plain "
                "nn.Parameters for L-CODEC"
            )


def _layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """The (name, module) of the layers whose slices are candidates."""
    modules = dict(model.named_modules())
    if layers is None:
        found = [
            (name, m)
            for name, m in modules.items()
            if isinstance(m, _LAYERS) and m.weight.requires_grad
        ]
        if not found:
            raise ValueError(
                "the model has no trainable Linear or Conv1d/2d/3d layer: nothing to slice"
            )
        return found
    if isinstance(layers, str):
        layers = [layers]
    out = []
    for name in layers:
        if name not in modules:
            raise ValueError(f"the model has no submodule named {name!r}")
        m = modules[name]
        if not any(True for _ in m.parameters(recurse=False)):
            raise ValueError(f"layer {name!r} ({type(m).__name__}) has no parameters to update")
        if not isinstance(m, _LAYERS):
            raise ValueError(
                f"layer {name!r} is a {type(m).__name__}; slices are defined for Linear and "
                "Conv1d/2d/3d layers"
            )
        if not m.weight.requires_grad:
            raise ValueError(f"layer {name!r}'s weight does not require grad (frozen)")
        out.append((name, m))
    return out


def _slices(layers: list[tuple[str, nn.Module]]) -> list[Slice]:
    return [Slice(name, j) for name, m in layers for j in range(m.weight.shape[0])]


def _summary(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """(batch, units): a Linear output's last dim, a Conv output's channels, other dims averaged."""
    if isinstance(module, nn.Linear):
        return output.reshape(output.shape[0], -1, output.shape[-1]).mean(1)
    return output.reshape(output.shape[0], output.shape[1], -1).mean(-1)


def collect_activations(
    model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[Slice]]:
    """Every slice's activation on the batch ``x``, read by forward hooks in one forward pass.

    Arguments:
        model: the network (run as is; put it in eval mode first if it has dropout).
        x: a batch of inputs (first dim the batch).
        layers: names of the Linear/Conv layers to read (default: every trainable one).

    Returns:
        ((batch, S) activations, the S slices in column order).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> acts, slices = collect_activations(net, torch.randn(5, 3))
        >>> acts.shape, [str(s) for s in slices][:2]
        (torch.Size([5, 6]), ['0[0]', '0[1]'])
    """
    chosen = _layers(model, layers)
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    try:
        for name, module in chosen:

            def hook(m, _inputs, output, name=name):
                captured[name] = _summary(m, output.detach())

            hooks.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    missing = [name for name, _ in chosen if name not in captured]
    if missing:
        raise ValueError(f"layer(s) {missing} were not called in the forward pass")
    return torch.cat([captured[name] for name, _ in chosen], dim=1), _slices(chosen)


# -- the objective, as a function of a block of parameters -----------------------------------
@dataclass
class _Part:
    name: str  # parameter name
    rows: torch.Tensor | None  # rows of the parameter in the block; None: all of it
    numel: int
    shape: torch.Size


class _Problem:
    """F(w) = mean_i ℓ(w; z_i) + (λ_wd/2) ‖w‖² through ``functional_call`` on ``model``."""

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

    def losses(self, params: dict[str, torch.Tensor], x, y) -> torch.Tensor:
        out = functional_call(self.model, {**self.fixed, **params}, (x,))
        return self.loss_fn(out, y)

    def objective(self, params: dict[str, torch.Tensor], x, y) -> torch.Tensor:
        value = self.losses(params, x, y).mean()
        if self.weight_decay:
            value = value + 0.5 * self.weight_decay * sum(p.square().sum() for p in params.values())
        return value

    def batches(self, n: int):
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

    def flat(self, params, parts: list[_Part]) -> torch.Tensor:
        pieces = [
            (params[p.name] if p.rows is None else params[p.name].index_select(0, p.rows))
            for p in parts
        ]
        return torch.cat([t.reshape(-1) for t in pieces])

    def scatter(self, params, parts: list[_Part], theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(params)
        start = 0
        for p in parts:
            piece = theta[start : start + p.numel].reshape(p.shape)
            start += p.numel
            out[p.name] = piece if p.rows is None else out[p.name].index_copy(0, p.rows, piece)
        return out

    def block_objective(self, params, parts):
        def f(theta, x, y):
            return self.objective(self.scatter(params, parts, theta), x, y)

        return f

    def hessian(self, f, theta, x, y, chunk: int) -> torch.Tensor:
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

    def gradient(self, params, x, y) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for a, b in self.batches(n):
            g = grad(self.objective)(params, x[a:b], y[a:b])
            for k in total:
                total[k] += (b - a) / n * g[k]
        return total


def _norm(tensors) -> float:
    return float(torch.sqrt(sum(t.square().sum() for t in tensors)))


def _accuracy(problem: _Problem, params, x, y) -> float:
    with torch.no_grad():
        correct = sum(
            (
                functional_call(problem.model, {**problem.fixed, **params}, (x[a:b],)).argmax(-1)
                == y[a:b]
            )
            .sum()
            .item()
            for a, b in problem.batches(x.shape[0])
        )
    return correct / x.shape[0]


# -- checks -----------------------------------------------------------------------------------
def _check_data(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError("data must be a pair (x, y) of tensors, the training data D")
    x, y = data
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError("data must be a pair (x, y) of tensors")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows, y has {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 training samples to remove one, got {x.shape[0]}")
    if x.device != device or y.device != device:
        raise ValueError(f"data on {x.device}/{y.device}, model on {device}: move them together")
    return x, y


def _check_options(selection, epsilon, delta, gamma, weight_decay, num_perturbations) -> None:
    if isinstance(selection, str) and selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if epsilon is not None:
        if gamma is None:
            raise ValueError(
                "epsilon is given but gamma is not: the (ε, δ) noise needs γ, the bound on "
                "‖w' − w*(D_r)‖ from the loss's Lipschitz and strong-convexity constants"
            )
        noise_scale(gamma, epsilon, delta)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay}")
    if num_perturbations < 2:
        raise ValueError(f"num_perturbations must be ≥ 2, got {num_perturbations}")


def _check_loss(problem: _Problem, params, x, y) -> None:
    with torch.no_grad():
        losses = problem.losses(params, x[:2], y[:2])
    if losses.shape != (2,):
        raise ValueError(
            "loss_fn(output, target) must return one loss per sample (e.g. "
            f"F.cross_entropy(..., reduction='none')), got shape {tuple(losses.shape)} for 2"
        )


def _validation_score(problem: _Problem, validation, params) -> float | None:
    if validation is None:
        return None
    if callable(validation):
        return float(validation(problem.model))
    return _accuracy(problem, params, *validation)


# -- one removal, in place on a private copy -------------------------------------------------
def _select(
    problem: _Problem,
    params,
    x,
    y,
    index: int,
    *,
    selection,
    layers,
    num_perturbations: int,
    perturbation_scale: float | None,
    num_random: int | None,
    max_slices: int | None,
    method: str,
    generator,
) -> tuple[list[Slice] | None, list[float]]:
    if selection == "all":
        return None, []
    if not isinstance(selection, str):
        given = list(selection)
        known = set(_slices(_layers(problem.model, sorted({s.layer for s in given}))))
        unknown = [str(s) for s in given if s not in known]
        if not given or unknown:
            raise ValueError(f"the given selection is empty or names unknown slices {unknown}")
        return given, []
    chosen = _layers(problem.model, layers)
    slices = _slices(chosen)
    if selection == "random" and num_random is not None:
        k = num_random
        coefficients: list[float] = []
    else:
        if not x.is_floating_point():
            raise TypeError(f"L-FOCI perturbs the inputs: x must be floating, got {x.dtype}")
        scale = perturbation_scale
        if scale is None:
            scale = 0.1 * float(x.float().std(0).mean())
        xz = x[index : index + 1]
        noise = torch.randn(
            (num_perturbations, *xz.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
        )
        perturbed = xz + scale * noise
        target = y[index : index + 1].expand(num_perturbations, *y.shape[1:])
        with torch.no_grad():
            acts, _ = collect_activations(problem.model, perturbed, [n for n, _ in chosen])
            losses = problem.losses(params, perturbed, target)
        limit = len(slices) if max_slices is None else min(max_slices, len(slices))
        result = foci(
            losses, acts, max_features=limit, min_features=1, method=method, generator=generator
        )
        if selection == "foci":
            return [slices[j] for j in result.selected], result.coefficients
        k, coefficients = len(result.selected), []
    if not 1 <= k <= len(slices):
        raise ValueError(f"num_random must be in [1, {len(slices)}], got {k}")
    pick = torch.randperm(len(slices), generator=generator, device=x.device)[:k]
    return [slices[j] for j in sorted(pick.tolist())], coefficients


def _remove_in_place(
    problem: _Problem,
    x: torch.Tensor,
    y: torch.Tensor,
    index: int,
    *,
    selection,
    layers,
    num_perturbations,
    perturbation_scale,
    num_random,
    max_slices,
    method,
    epsilon,
    delta,
    gamma,
    damping,
    hessian_chunk,
    max_block_size,
    residual,
    validation,
    max_validation_drop,
    validation_before,
    generator,
) -> RemovalResult:
    start = time.perf_counter()
    n = x.shape[0]
    if not 0 <= index < n:
        raise IndexError(f"erase index {index} is out of range for {n} training samples")
    params = problem.params()
    slices, coefficients = _select(
        problem,
        params,
        x,
        y,
        index,
        selection=selection,
        layers=layers,
        num_perturbations=num_perturbations,
        perturbation_scale=perturbation_scale,
        num_random=num_random,
        max_slices=max_slices,
        method=method,
        generator=generator,
    )
    seconds_selection = time.perf_counter() - start
    parts = problem.parts(slices)
    size = sum(p.numel for p in parts)
    if size == 0:
        raise ValueError(f"the selected slices {[str(s) for s in slices]} hold no parameters")
    if size > max_block_size:
        raise ValueError(
            f"the block has {size} parameters; its dense Hessian would exceed max_block_size="
            f"{max_block_size} (choose selection='foci', or raise max_block_size)"
        )
    f = problem.block_objective(params, parts)
    theta = problem.flat(params, parts)
    xz, yz = x[index : index + 1], y[index : index + 1]
    chunk = min(size, hessian_chunk)
    H = problem.hessian(f, theta, x, y, chunk)
    Hz = problem.hessian(f, theta, xz, yz, chunk)
    gz = grad(f)(theta, xz, yz)
    eye = torch.eye(size, dtype=theta.dtype, device=theta.device)
    Hr = (n * H - Hz) / (n - 1)
    Hr = 0.5 * (Hr + Hr.T) + damping * eye
    chol, info = torch.linalg.cholesky_ex(Hr)
    shift = 0.0
    if int(info) != 0:
        # Not positive definite: shift the spectrum (Nocedal & Wright §3.4) so that the smallest
        # eigenvalue becomes |λ_min| — a floor near 0 would blow the step up along that direction.
        evals = torch.linalg.eigvalsh(Hr)
        floor = torch.maximum(evals[0].abs(), 1e-6 * evals.abs().max()).clamp_min(1e-12)
        shift = float(floor - evals[0])
        chol = torch.linalg.cholesky(Hr + shift * eye)
    step = torch.cholesky_solve(gz[:, None], chol)[:, 0] / (n - 1)
    new_theta = theta + step
    sigma = 0.0
    if epsilon is not None:
        sigma = noise_scale(gamma, epsilon, delta)
        new_theta = new_theta + sigma * torch.randn(
            size, generator=generator, device=theta.device, dtype=theta.dtype
        )
    new_params = problem.scatter(params, parts, new_theta)

    def commit(values):
        with torch.no_grad():
            named = dict(problem.model.named_parameters())
            for k in problem.trainable:
                named[k].copy_(values[k])

    with torch.no_grad():
        loss_before = float(problem.losses(params, xz, yz)[0])
    commit(new_params)
    try:
        score_after = _validation_score(problem, validation, new_params)
        if validation_before is None:
            commit(params)
            validation_before = _validation_score(problem, validation, params)
            commit(new_params)
        applied = True
        if (
            max_validation_drop is not None
            and validation_before is not None
            and validation_before - score_after > max_validation_drop
        ):
            commit(params)
            applied = False
        kept = new_params if applied else params
        with torch.no_grad():
            loss_after = float(problem.losses(kept, xz, yz)[0])
        removed_grad = _norm(grad(lambda p: problem.losses(p, xz, yz).sum())(kept).values())
        keep = torch.arange(n, device=x.device) != index
        residual_norm = None
        if residual:
            residual_norm = _norm(problem.gradient(kept, x[keep], y[keep]).values())
    except BaseException:
        commit(params)
        raise
    return RemovalResult(
        model=None,
        index=index,
        selection=selection if isinstance(selection, str) else "given",
        selected=[] if slices is None else slices,
        block_size=size,
        coefficients=coefficients,
        step_norm=float(step.norm()),
        noise_scale=sigma,
        hessian_shift=shift,
        removed_loss=(loss_before, loss_after),
        removed_grad_norm=removed_grad,
        residual_grad_norm=residual_norm,
        validation=None if validation is None else (validation_before, score_after),
        applied=applied,
        retrain_advised=not applied,
        seconds=time.perf_counter() - start,
        seconds_selection=seconds_selection,
    )


def _prepare(model, loss_fn, data, weight_decay, batch_size, validation):
    _check_point_estimate(model)
    work = copy.deepcopy(model)
    training = work.training
    work.eval()
    problem = _Problem(work, loss_fn, weight_decay, batch_size)
    device = next(iter(problem.params().values())).device
    x, y = _check_data(data, device)
    if validation is not None and not callable(validation):
        xv, yv = _check_data(validation, device)
        validation = (xv, yv)
    _check_loss(problem, problem.params(), x, y)
    return work, training, problem, x, y, validation


def remove(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, torch.Tensor],
    erase_index: int,
    *,
    weight_decay: float = 0.0,
    selection: str | Sequence[Slice] = "foci",
    layers: Sequence[str] | None = None,
    num_perturbations: int = 256,
    perturbation_scale: float | None = None,
    num_random: int | None = None,
    max_slices: int | None = None,
    method: str = "lcodec",
    epsilon: float | None = None,
    delta: float = 0.01,
    gamma: float | None = None,
    damping: float = 0.0,
    validation: Validation | None = None,
    max_validation_drop: float | None = None,
    residual: bool = True,
    batch_size: int = 4096,
    hessian_chunk: int = 128,
    max_block_size: int = 20_000,
    generator: torch.Generator | None = None,
) -> RemovalResult:
    """Remove the sample ``data[erase_index]`` from a trained network by the L-CODEC block Newton
    step (see the module docstring for the math). The input model is not modified.

    Arguments:
        model: a trained point-estimate network (``nn.Module`` or a ``PyroModule`` with plain
            parameters), trained to (near) a minimiser of F on ``data``.
        loss_fn: ``loss_fn(output, target)`` → one loss per sample, e.g.
            ``lambda out, y: F.cross_entropy(out, y, reduction="none")``.
        data: the training data D = (x, y) the model was trained on (rows along dim 0).
        erase_index: the row of D to remove.
        weight_decay: λ_wd of the training objective (its L2 term on every trainable parameter).
        selection: "foci" (L-FOCI on activations), "random" (as many slices as FOCI picks, or
            ``num_random``), "all" (every parameter: the full-Hessian update), or a list of
            :class:`Slice`.
        layers: names of the Linear/Conv layers whose slices are candidates (default: all).
        num_perturbations: m, the perturbed copies of the input that feed L-FOCI.
        perturbation_scale: σ of the input perturbations (default 0.1 × the mean per-feature
            standard deviation of x).
        num_random: the size of a random selection (default: what FOCI selects).
        max_slices: at most this many slices from FOCI.
        method: "lcodec" (L-FOCI) or "codec" (exact tie-breaking).
        epsilon, delta, gamma: the (ε, δ) certified-removal noise N(0, σ²) added to the block
            P, σ = (γ/ε)√(2 ln(1.25/δ)) (off when ``epsilon`` is None).
        damping: added to the diagonal of H'_P.
        validation: (x_val, y_val) scored by accuracy, or a callable ``model → score``
            (higher is better).
        max_validation_drop: discard the update (model unchanged, ``retrain_advised``) if the
            validation score drops by more than this.
        residual: compute ‖∇F_r(w')‖ on D_r (one pass over D_r).
        batch_size: rows of D per pass (Hessian and gradients are summed over batches).
        hessian_chunk: Hessian columns computed at once (vmapped Hessian-vector products).
        max_block_size: refuse blocks with more parameters (the dense block Hessian is P × P).
        generator: the random generator (perturbations, random selection, jitter, noise).

    Returns:
        a :class:`RemovalResult` whose ``model`` is the updated copy.

    Example:
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
        >>> net = nn.Linear(4, 3)
        >>> loss = lambda out, t: F.cross_entropy(out, t, reduction="none")
        >>> opt = torch.optim.LBFGS(net.parameters(), max_iter=200, line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     reg = sum(p.square().sum() for p in net.parameters())
        ...     value = loss(net(x), y).mean() + 0.05 * reg
        ...     value.backward()
        ...     return value
        >>> _ = opt.step(closure)
        >>> result = remove(net, loss, (x, y), 7, weight_decay=0.1)
        >>> result.selection, 1 <= len(result.selected) <= 3, result.model is not net
        ('foci', True, True)
    """
    _check_options(selection, epsilon, delta, gamma, weight_decay, num_perturbations)
    work, training, problem, x, y, validation = _prepare(
        model, loss_fn, data, weight_decay, batch_size, validation
    )
    if not isinstance(erase_index, int) or isinstance(erase_index, bool):
        raise TypeError(f"erase_index must be an int, got {type(erase_index).__name__}")
    result = _remove_in_place(
        problem,
        x,
        y,
        erase_index,
        selection=selection,
        layers=layers,
        num_perturbations=num_perturbations,
        perturbation_scale=perturbation_scale,
        num_random=num_random,
        max_slices=max_slices,
        method=method,
        epsilon=epsilon,
        delta=delta,
        gamma=gamma,
        damping=damping,
        hessian_chunk=hessian_chunk,
        max_block_size=max_block_size,
        residual=residual,
        validation=validation,
        max_validation_drop=max_validation_drop,
        validation_before=None,
        generator=generator,
    )
    work.train(training)
    result.model = work
    return result


def remove_sequentially(
    model: nn.Module,
    loss_fn: LossFn,
    data: tuple[torch.Tensor, torch.Tensor],
    erase_indices: Sequence[int] | torch.Tensor,
    *,
    progress: bool = True,
    validation: Validation | None = None,
    max_validation_drop: float | None = None,
    **kwargs,
) -> SequentialRemovalResult:
    """Remove the rows ``erase_indices`` of D one at a time, each from the model and the data
    the previous removals left (n shrinks by one each time), with a progress bar.

    A removal whose validation score drops by more than ``max_validation_drop`` is skipped: the
    model stays as it was, the sample stays in D for the later Hessians (the model still carries
    it), and it is listed in ``skipped`` (``retrain_advised``). Other keyword arguments are those
    of :func:`remove`; ``num_random`` may also be a list, one size per request (e.g. the sizes
    a FOCI run picked, for a paired random baseline). The input model is not modified.

    Example:
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(100, 3), torch.randint(0, 2, (100,))
        >>> net = nn.Linear(3, 2)
        >>> loss = lambda out, t: F.cross_entropy(out, t, reduction="none")
        >>> out = remove_sequentially(net, loss, (x, y), [3, 9], selection="all", progress=False)
        >>> out.removed, out.skipped, len(out.steps)
        ([3, 9], [], 2)
    """
    start = time.perf_counter()
    _check_options(
        kwargs.get("selection", "foci"),
        kwargs.get("epsilon"),
        kwargs.get("delta", 0.01),
        kwargs.get("gamma"),
        kwargs.get("weight_decay", 0.0),
        kwargs.get("num_perturbations", 256),
    )
    weight_decay = kwargs.pop("weight_decay", 0.0)
    batch_size = kwargs.pop("batch_size", 4096)
    work, training, problem, x, y, validation = _prepare(
        model, loss_fn, data, weight_decay, batch_size, validation
    )
    n = x.shape[0]
    order = torch.as_tensor(erase_indices).reshape(-1).tolist()
    if len(set(order)) != len(order):
        raise ValueError("erase_indices has repeated entries")
    bad = [i for i in order if not 0 <= i < n]
    if bad:
        raise IndexError(f"erase indices {bad} are out of range for {n} training samples")
    if len(order) >= n:
        raise ValueError(f"cannot remove {len(order)} of {n} samples: at least 2 must remain")
    defaults = dict(
        selection="foci",
        layers=None,
        num_perturbations=256,
        perturbation_scale=None,
        num_random=None,
        max_slices=None,
        method="lcodec",
        epsilon=None,
        delta=0.01,
        gamma=None,
        damping=0.0,
        hessian_chunk=128,
        max_block_size=20_000,
        residual=True,
        generator=None,
    )
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    options = {**defaults, **kwargs}
    sizes = options.pop("num_random")
    if sizes is None or isinstance(sizes, int):
        sizes = [sizes] * len(order)
    sizes = list(sizes)
    if len(sizes) != len(order):
        raise ValueError(f"num_random has {len(sizes)} entries for {len(order)} requests")
    if options["perturbation_scale"] is None:  # fixed by the full data, not the shrinking one
        options["perturbation_scale"] = 0.1 * float(x.float().std(0).mean())
    keep = torch.ones(n, dtype=torch.bool, device=x.device)
    out = SequentialRemovalResult(model=work)
    score = None
    bar = tqdm(order, desc="L-CODEC removals", disable=not progress)
    for i, size in zip(bar, sizes, strict=True):
        position = int(keep[:i].sum())
        step = _remove_in_place(
            problem,
            x[keep],
            y[keep],
            position,
            num_random=size,
            validation=validation,
            max_validation_drop=max_validation_drop,
            validation_before=score,
            **options,
        )
        step.index = i
        out.steps.append(step)
        if step.applied:
            keep[i] = False
            out.removed.append(i)
            score = None if step.validation is None else step.validation[1]
        else:
            out.skipped.append(i)
            score = step.validation[0]
        if progress and step.validation is not None:
            bar.set_postfix(validation=f"{step.validation[1]:.4f}", skipped=len(out.skipped))
    work.train(training)
    out.seconds = time.perf_counter() - start
    return out
