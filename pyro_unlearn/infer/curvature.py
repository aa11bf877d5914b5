"""The erased data's log-likelihood log p(D_e|θ) over a guide's flat θ, and its curvature."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.poutine import Trace
from pyro.poutine.util import site_is_subsample
from torch.func import grad, grad_and_value, hessian, jacrev, jvp, vjp, vmap

from ..guides.gaussian import LatentLayout, latent_layout
from ..handlers import ERASED, erased_log_likelihood, is_erased, unlearn
from ..posterior import FrozenPosterior
from ..traces import subsampled_plates
from .base import INDEPENDENT_LIKELIHOOD

__all__ = ["CURVATURES", "ErasedLogLikelihood"]

#: Structures of the curvature H_e of −log p(D_e|θ): dense ones ("full" Hessian, generalised
#: Gauss–Newton "ggn") and diagonal ones ("diag", "ggn_diag"), which never form a P×P matrix.
CURVATURES = ("full", "ggn", "diag", "ggn_diag")


class ErasedLogLikelihood:
    r"""θ ↦ log p(D_e|θ) over a guide's flat unconstrained θ, differentiable by ``torch.func``.

    The model runs under :func:`~pyro_unlearn.unlearn` with its latents conditioned on
    θ, each site's slice mapped through its bijection (:func:`~pyro_unlearn.guides.latent_layout`),
    and only the erased observations are scored, exactly as the unlearning losses read them.
    Its curvature (:meth:`curvature`) is that of −log p(D_e|θ):

    .. math:: H_e(θ) = −∇^2_θ \log p(D_e|θ) \quad\text{or}\quad
              G_e(θ) = \sum_m J_m^\top (−∇^2_f \log p(y_m|f))\, J_m,

    the Hessian or the generalised Gauss–Newton (GGN) of the likelihood's output f (Normal loc
    with its scale held fixed, Bernoulli or Categorical logits), J_m = ∂f_m/∂θ.

    Arguments:
        model: the Pyro model.
        layout: the flat layout of θ: a :class:`~pyro_unlearn.guides.LatentLayout`, or a guide
            that has been run (live or frozen), whose layout is read.
        *args, **kwargs: the model's arguments: the erased data alone with ``erased=None``,
            or the full data with the erased rows of ``plate``.
        erased, plate: as :func:`~pyro_unlearn.unlearn`'s.

    References:
        A. Rawat, J. Requeima, W. Bruinsma, R. E. Turner. Challenges and Pitfalls of Bayesian
        Unlearning. ICML 2022 Workshop on Updatable Machine Learning (arXiv:2207.03227).

        J. Martens. New Insights and Perspectives on the Natural Gradient Method. JMLR 2020.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> pyro.clear_param_store()
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x, y):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("y", dist.Normal(w * x, 0.5), obs=y)
        >>> x = y = torch.tensor([1.0, 2.0])
        >>> guide = AutoNormal(model)
        >>> _ = guide(x, y)
        >>> loglik = ErasedLogLikelihood(model, guide, x, y, erased=[1], plate="data")
        >>> loglik.curvature(torch.zeros(1), "full")  # x_e² / σ² = 4 / 0.25
        tensor([[16.]])
    """

    def __init__(
        self,
        model: Callable,
        layout: LatentLayout | AutoGuide | FrozenPosterior,
        *args: Any,
        erased: Any = None,
        plate: str | Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.model = unlearn(model, erased=erased, plate=plate)
        self.layout = layout if isinstance(layout, LatentLayout) else latent_layout(layout)
        self.args, self.kwargs = args, kwargs
        self._traced = False

    def trace(self, theta: torch.Tensor) -> Trace:
        """The model's trace at θ, log-probabilities computed at the erased sites."""
        # condition outside unlearn: unlearn sees the latents before they become observed
        conditioned = poutine.condition(self.model, data=self.layout.values(theta))
        trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        trace.compute_log_prob(site_filter=is_erased)
        return trace

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """log p(D_e|θ)."""
        return erased_log_likelihood(self.trace(theta))[0]

    def value_and_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(D_e|θ) and its gradient in θ (``torch.func``, validation off)."""
        gradient, value = _func(grad_and_value(self), theta)
        return value, gradient

    def curvature(
        self,
        theta: torch.Tensor,
        structure: str = "full",
        *,
        probes: int | None = None,
        chunk_size: int = 64,
    ) -> torch.Tensor:
        """The curvature of −log p(D_e|θ) at θ, of the given ``structure`` (:data:`CURVATURES`):
        ``"full"`` −∇² log p (P, P), ``"ggn"`` the GGN (P, P), ``"diag"`` −diag ∇² log p (P,)
        from Hessian-vector products (exact from P of them, or Hutchinson's E[z ⊙ Hz] over
        ``probes`` Rademacher z), ``"ggn_diag"`` the GGN's diagonal (P,), one vector-Jacobian
        product per erased output and class. ``chunk_size`` products are batched by ``vmap``."""
        if not self._traced:  # unlearn caches its erased-row masks: build them outside torch.func
            with torch.no_grad(), pyro.validation_enabled(False):
                self.trace(theta.detach())
            self._traced = True
        if structure == "full":
            try:
                H = -_func(hessian(self), theta)
            except RuntimeError as e:
                if not _forward_mode_failed(e):
                    raise
                H = -_func(jacrev(jacrev(self)), theta)  # reverse over reverse
            return 0.5 * (H + H.T)
        if structure == "diag":
            return -_hessian_diagonal(self, theta, probes, chunk_size)
        if structure in ("ggn", "ggn_diag"):
            return _ggn(self, theta, structure == "ggn_diag", chunk_size)
        raise ValueError(f"structure must be one of {CURVATURES}, got {structure!r}")

    def check(self, theta: torch.Tensor) -> Trace:
        """One plain run, with the user's validation settings: clear errors before torch.func
        (a subsampling plate, a latent outside the layout, a non-finite log p(D_e|θ))."""
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
        self.check_depends_on_theta(theta)
        return trace

    def check_depends_on_theta(self, theta: torch.Tensor) -> None:
        """Raise a ``ValueError`` if log p(D_e|θ) does not depend on θ: no autograd path from θ
        to it, or a gradient exactly zero at θ and at a second point near it (a likelihood
        computed from something other than the latents, e.g. a model's parameters)."""
        offset = 0.1 * torch.linspace(-1.0, 1.0, theta.numel(), dtype=theta.dtype)
        for point in (theta, theta + offset.to(theta.device).reshape(theta.shape)):
            with torch.enable_grad():
                point = point.detach().requires_grad_(True)
                value = self(point)
                if not value.requires_grad:
                    break
                (gradient,) = torch.autograd.grad(value, point, allow_unused=True)
            if gradient is None:
                break
            if bool(gradient.ne(0).any()):
                return
        raise ValueError(
            f"log p(D_e|θ) has no gradient with respect to θ at the posterior mean μ_D: "
            f"{INDEPENDENT_LIKELIHOOD}"
        )


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


def _forward_mode_failed(error: RuntimeError) -> bool:
    """Whether torch's forward-over-reverse failed where reverse-over-reverse works: an index's
    backward (``a[..., county]``) under ``jvp`` meets a tangent of another dtype (torch 2.x)."""
    return "dtypes match" in str(error)


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

    def hvp_reverse(v):  # H is symmetric: vᵀH = Hv
        return vjp(grad(loglik), theta)[1](v)[0]

    try:
        _func(vmap(hvp), torch.zeros(1, P, dtype=theta.dtype, device=theta.device))
    except RuntimeError as e:
        if not _forward_mode_failed(e):
            raise
        hvp = hvp_reverse
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
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and is_erased(name, site)
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
    loglik: ErasedLogLikelihood,
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
