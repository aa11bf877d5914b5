"""One L-CODEC removal: select the block, take the Newton step on it, add the (ε, δ) noise,
keep the update or discard it on a validation drop (:func:`remove`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import grad

from ..validation import check_nonnegative, check_nonnegative_int, check_positive_int
from .newton import LossFn, Objective, newton_step, noise_scale
from .options import RemovalOptions, Validation, validation_score, working_copy
from .selection import select_block
from .slices import Slice

__all__ = [
    "RemovalResult",
    "check_removal_request",
    "remove",
    "remove_in_place",
]


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
        converged: (a property) the update was kept and H'_P needed no shift: the step is
            Newton's step to the minimiser of the quadratic model of F_r on the block.

    Not an :class:`~pyro_unlearn.results.UnlearningResult`: L-CODEC updates a point estimate,
    there is no posterior to return; ``seconds`` and ``converged`` mean the same as there.
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

    @property
    def converged(self) -> bool:
        """The update was kept and H'_P was positive definite (no shift): a Newton step."""
        return self.applied and self.hessian_shift == 0.0


def check_removal_request(num_random: Any, validation: Any, max_validation_drop: Any) -> None:
    """The options of a removal request outside :class:`RemovalOptions`: ``num_random`` (None or
    a positive int) and ``max_validation_drop`` (None, or ≥ 0 with a validation to score).

    Example:
        >>> check_removal_request(None, None, 0.1)
        Traceback (most recent call last):
        ...
        ValueError: max_validation_drop=0.1 needs validation= to score the update on
    """
    if num_random is not None:
        check_positive_int("num_random", num_random)
    if max_validation_drop is not None:
        check_nonnegative("max_validation_drop", max_validation_drop)
        if validation is None:
            raise ValueError(
                f"max_validation_drop={max_validation_drop} needs validation= to score the "
                "update on"
            )


def _norm(tensors) -> float:
    return float(torch.sqrt(sum(t.square().sum() for t in tensors)))


# -- one removal, in place on a private copy -------------------------------------------------
def _block(objective: Objective, params, x, y, index: int, options: RemovalOptions, num_random):
    """Steps 1–2: the slices of the block P, L-FOCI's coefficients and P's parts."""
    slices, coefficients = select_block(
        objective,
        params,
        x,
        y,
        index,
        selection=options.selection,
        layers=options.layers,
        num_perturbations=options.num_perturbations,
        perturbation_scale=options.perturbation_scale,
        num_random=num_random,
        max_slices=options.max_slices,
        method=options.method,
        generator=options.generator,
    )
    parts = objective.parts(slices)
    size = sum(p.numel for p in parts)
    if size == 0:
        raise ValueError(f"the selected slices {[str(s) for s in slices]} hold no parameters")
    if size > options.max_block_size:
        raise ValueError(
            f"the block has {size} parameters; its dense Hessian would exceed max_block_size="
            f"{options.max_block_size} (choose selection='foci', or raise max_block_size)"
        )
    return slices, coefficients, parts


def _commit(objective: Objective, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        named = dict(objective.model.named_parameters())
        for k in objective.trainable:
            named[k].copy_(values[k])


def _keep_or_discard(objective, params, new_params, validation, max_drop, before):
    """Step 5: commit the update, score it and roll it back on a drop above ``max_drop``.
    Returns (applied, (score before, after) or None)."""
    _commit(objective, new_params)
    after = validation_score(objective, validation, new_params)
    if before is None:
        _commit(objective, params)
        before = validation_score(objective, validation, params)
        _commit(objective, new_params)
    applied = not (max_drop is not None and before is not None and before - after > max_drop)
    if not applied:
        _commit(objective, params)
    return applied, None if validation is None else (before, after)


def remove_in_place(
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    index: int,
    options: RemovalOptions,
    *,
    num_random: int | None = None,
    validation: Validation | None = None,
    max_validation_drop: float | None = None,
    validation_before: float | None = None,
) -> RemovalResult:
    """Remove the row ``index`` of (x, y) from ``objective.model`` in place (a working copy:
    see :func:`working_copy`); on an error the model is rolled back. ``validation_before`` is
    the score before, when the caller knows it. Returns the :class:`RemovalResult` (``model``
    None)."""
    start = time.perf_counter()
    n = x.shape[0]
    if not 0 <= index < n:
        raise IndexError(f"erase index {index} is out of range for {n} training samples")
    params = objective.params()
    slices, coefficients, parts = _block(objective, params, x, y, index, options, num_random)
    seconds_selection = time.perf_counter() - start
    theta, step, shift = newton_step(
        objective,
        params,
        parts,
        x,
        y,
        index,
        damping=options.damping,
        hessian_chunk=options.hessian_chunk,
    )
    new_theta, sigma = theta + step, 0.0
    if options.epsilon is not None:
        sigma = noise_scale(options.gamma, options.epsilon, options.delta)
        noise = torch.randn(
            theta.shape, generator=options.generator, device=theta.device, dtype=theta.dtype
        )
        new_theta = new_theta + sigma * noise
    new_params = objective.scatter(params, parts, new_theta)
    xz, yz = x[index : index + 1], y[index : index + 1]
    with torch.no_grad():
        loss_before = float(objective.losses(params, xz, yz)[0])
    try:
        applied, scores = _keep_or_discard(
            objective, params, new_params, validation, max_validation_drop, validation_before
        )
        kept = new_params if applied else params
        with torch.no_grad():
            loss_after = float(objective.losses(kept, xz, yz)[0])
        removed_grad = _norm(grad(lambda p: objective.losses(p, xz, yz).sum())(kept).values())
        residual_norm = None
        if options.residual:
            keep = torch.arange(n, device=x.device) != index
            residual_norm = _norm(objective.gradient(kept, x[keep], y[keep]).values())
    except BaseException:
        _commit(objective, params)
        raise
    return RemovalResult(
        model=None,
        index=index,
        selection=options.selection if isinstance(options.selection, str) else "given",
        selected=[] if slices is None else slices,
        block_size=theta.numel(),
        coefficients=coefficients,
        step_norm=float(step.norm()),
        noise_scale=sigma,
        hessian_shift=shift,
        removed_loss=(loss_before, loss_after),
        removed_grad_norm=removed_grad,
        residual_grad_norm=residual_norm,
        validation=scores,
        applied=applied,
        retrain_advised=not applied,
        seconds=time.perf_counter() - start,
        seconds_selection=seconds_selection,
    )


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
    r"""Remove the sample z = ``data[erase_index]`` from a trained network by L-CODEC: a Newton
    step on the block P of parameters that L-FOCI ties to z, everything else unchanged.

    .. math:: H'_P = \frac{n H_P − H_P(z)}{n − 1}, \qquad
              w_P ← w_P + \frac{H'^{-1}_P ∇_P f(ŵ; z)}{n − 1} + N(0, σ_ε^2 I), \qquad
              σ_ε = \frac{γ}{ε} \sqrt{2 \ln(1.25/δ)}

    with F(w) = (1/n) Σ_i f(w; z_i), f(w; z) = ℓ(w; z) + (λ_wd/2) ‖w‖², H_P = ∇²_P F(ŵ) and
    H_P(z) = ∇²_P f(ŵ; z) (see :func:`~pyro_unlearn.lcodec.newton.newton_step`). The input
    model is not modified: the update is made on a deep copy, which an error or a rejected
    update (``max_validation_drop``) leaves as it was.

    The argument order differs from :func:`~pyro_unlearn.forget`'s ``(model, guide, *args,
    erased=, plate=)``: L-CODEC unlearns a point-estimate ``nn.Module`` trained on a loss, not a
    Pyro model with a guide, so it takes the loss and the training data (x, y) in their place
    and the row to remove by its index.

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

    Raises:
        TypeError, ValueError: an option of the wrong type or out of range (checked before
            anything runs), non-finite data or validation (named with the first row), a loss
            that is not finite on some row of D, or a network that cannot take the data.
        IndexError: ``erase_index`` beyond the rows of D. ``model`` is never modified.

    References:
        R. Mehta, S. Pal, V. Singh, S. N. Ravi. Deep Unlearning via Randomized Conditionally
        Independent Hessians. CVPR 2022.

        A. Sekhari, J. Acharya, G. Kamath, A. T. Suresh. Remember What You Want to Forget:
        Algorithms for Machine Unlearning. NeurIPS 2021 (the full-Hessian update, "all").

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
        >>> result.converged  # kept, and H'_P was positive definite
        True
    """
    options = RemovalOptions(
        weight_decay=weight_decay,
        selection=selection,
        layers=layers,
        num_perturbations=num_perturbations,
        perturbation_scale=perturbation_scale,
        max_slices=max_slices,
        method=method,
        epsilon=epsilon,
        delta=delta,
        gamma=gamma,
        damping=damping,
        residual=residual,
        batch_size=batch_size,
        hessian_chunk=hessian_chunk,
        max_block_size=max_block_size,
        generator=generator,
    )
    erase_index = check_nonnegative_int("erase_index", erase_index)
    check_removal_request(num_random, validation, max_validation_drop)
    work, training, objective, x, y, validation = working_copy(
        model, loss_fn, data, options, validation
    )
    result = remove_in_place(
        objective,
        x,
        y,
        erase_index,
        options,
        num_random=num_random,
        validation=validation,
        max_validation_drop=max_validation_drop,
    )
    work.train(training)
    result.model = work
    return result
