"""A zuko normalising flow as a Pyro autoguide over the model's unconstrained latent vector."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import zuko
from pyro.contrib.zuko import ZukoToPyro
from pyro.distributions.transforms import LowerCholeskyAffine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import constraints, transform_to

__all__ = ["FLOW_PRESETS", "AutoZukoFlow"]


def _coupling(features: int, transforms: int, hidden_features: Sequence[int], **kw):
    return zuko.flows.MAF(
        features, transforms=transforms, hidden_features=hidden_features, passes=2, **kw
    )


def _maf(features: int, transforms: int, hidden_features: Sequence[int], **kw):
    return zuko.flows.MAF(features, transforms=transforms, hidden_features=hidden_features, **kw)


def _iaf(features: int, transforms: int, hidden_features: Sequence[int], **kw):
    maf = _maf(features, transforms, hidden_features, **kw)
    return zuko.flows.Flow(maf.transform.inv, maf.base)


#: Named flows: ``"coupling"`` (MADE with two passes, i.e. affine coupling: cheap to sample and to
#: score), ``"maf"`` (masked autoregressive: scores in one pass, samples in D), ``"iaf"`` (its
#: inverse: samples in one pass, scores in D). Both losses need both directions (the EUBO samples
#: q_u and scores q(θ|D); ReverseKL samples q(θ|D) and scores q_v), hence the coupling default.
FLOW_PRESETS: dict[str, Callable[..., zuko.flows.LazyDistribution]] = {
    "coupling": _coupling,
    "maf": _maf,
    "iaf": _iaf,
}


class _GaussianAffine(zuko.flows.LazyTransform):
    """The flow's first map in the scoring direction, x ↦ L⁻¹(x − loc): the inverse of
    θ = loc + L y with a learnable loc and lower-triangular L (positive diagonal). The Gaussian
    part of q is learnt directly, as in AutoMultivariateNormal; the flow after it only has to
    model departures from a Gaussian (a MADE learns strong linear dependences slowly)."""

    def __init__(self, loc: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.loc = torch.nn.Parameter(loc.clone())
        eye = torch.eye(loc.shape[-1], dtype=loc.dtype, device=loc.device)
        self.unconstrained_scale_tril = torch.nn.Parameter(
            transform_to(constraints.lower_cholesky).inv(scale * eye)
        )

    @property
    def scale_tril(self) -> torch.Tensor:
        return transform_to(constraints.lower_cholesky)(self.unconstrained_scale_tril)

    def forward(self, c: torch.Tensor | None = None) -> torch.distributions.Transform:
        return LowerCholeskyAffine(self.loc, self.scale_tril).inv


class AutoZukoFlow(AutoContinuous):
    r"""q(θ) = a zuko normalising flow over the model's packed unconstrained latent vector.

    θ = loc + L y with y drawn from the flow: loc and the lower-triangular L are learnt (the
    Gaussian part, as in AutoMultivariateNormal) and start at ``init_loc_fn``'s point and
    ``init_scale``·I; the presets' transforms start at the identity, so training starts from
    exactly N(init_loc, init_scale²·I) and the flow learns the departures from a Gaussian.
    Being an :class:`~pyro.infer.autoguide.AutoContinuous`, it samples one
    auxiliary site ``_AutoZukoFlow_latent`` and reuses Pyro's packing and constraints; its flow
    parameters register in the param store like any PyroModule's.

    Arguments:
        model: the Pyro model.
        flow: a preset name from :data:`FLOW_PRESETS` (``"coupling"``, ``"maf"``, ``"iaf"``), or a
            callable ``features -> zuko.flows.LazyDistribution`` for any other zuko flow (e.g.
            ``lambda d: zuko.flows.NSF(d, transforms=3)``).
        transforms: number of flow transforms (presets only). With a 1-D latent the MADE
            presets (``"maf"``, ``"iaf"``, ``"coupling"``) have no inputs to condition on and are
            one affine map, i.e. Gaussian: pass a spline flow for a multimodal 1-D posterior,
            e.g. ``lambda d: zuko.flows.NSF(d, transforms=3)`` (``tutorials/bimodal.ipynb``).
        hidden_features: hidden layer widths of each transform's MADE network (presets only).
        init_loc_fn: per-site initialisation, as for Pyro's autoguides.
        init_scale: the initial scale of the Gaussian part.

    Example::

        >>> import pyro, torch, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoZukoFlow(model, "maf", hidden_features=(8, 8))
        >>> guide()["theta"].shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable[[int], zuko.flows.LazyDistribution] = "coupling",
        *,
        transforms: int = 3,
        hidden_features: Sequence[int] = (64, 64),
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        **flow_kwargs,
    ) -> None:
        if isinstance(flow, str):
            if flow not in FLOW_PRESETS:
                raise ValueError(f"unknown flow {flow!r}; presets are {sorted(FLOW_PRESETS)}")
        elif not callable(flow):
            raise TypeError(
                "flow must be a preset name or a callable features -> zuko LazyDistribution, "
                f"got {type(flow).__name__}"
            )
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self._flow_spec = flow
        self._flow_args = dict(transforms=transforms, hidden_features=tuple(hidden_features))
        self._flow_kwargs = flow_kwargs
        self._init_scale = init_scale
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        loc = self._init_loc().detach()
        if isinstance(self._flow_spec, str):
            inner = FLOW_PRESETS[self._flow_spec](
                self.latent_dim, **self._flow_args, **self._flow_kwargs
            )
            _start_at_identity(inner)
        else:
            inner = self._flow_spec(self.latent_dim)
        if not isinstance(inner, zuko.flows.Flow):
            raise TypeError(
                f"the flow callable must return a zuko.flows.Flow, got {type(inner).__name__}"
            )
        inner = inner.to(device=loc.device, dtype=loc.dtype)
        shape = inner().event_shape
        if shape != (self.latent_dim,):
            raise ValueError(
                f"the flow's event shape is {tuple(shape)}, the model's latent vector has "
                f"{self.latent_dim} unconstrained dimensions"
            )
        standardise = _GaussianAffine(loc, self._init_scale)
        self.flow = zuko.flows.Flow([standardise, *_transforms(inner)], inner.base)

    def set_gaussian(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        """Set the Gaussian part θ = loc + L·y, e.g. to a Laplace approximation or to a trained
        AutoMultivariateNormal's ``loc`` and ``scale_tril``; the flow's transforms are left as
        they are, so a fresh preset guide becomes exactly N(loc, LLᵀ). Call the guide once
        first (it builds its flow on the first call). Works in place, without autograd."""
        if self.prototype_trace is None:
            raise RuntimeError(
                "call the guide once (with the model's arguments) before set_gaussian"
            )
        affine = self.flow.transform.transforms[0]
        if loc.shape != affine.loc.shape or scale_tril.shape != affine.scale_tril.shape:
            raise ValueError(
                f"expected loc of shape {tuple(affine.loc.shape)} and scale_tril of shape "
                f"{tuple(affine.scale_tril.shape)}, got {tuple(loc.shape)} and "
                f"{tuple(scale_tril.shape)}"
            )
        with torch.no_grad():
            affine.loc.copy_(loc)
            affine.unconstrained_scale_tril.copy_(
                transform_to(constraints.lower_cholesky).inv(scale_tril)
            )

    def get_posterior(self, *args, **kwargs) -> ZukoToPyro:
        """The flow as a Pyro distribution (scores points it did not draw, caches its own;
        ``.sample(shape)`` and ``.rsample(shape)`` work too)."""
        return _FlowPosterior(self.flow())

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError(
            "a flow has no closed-form median; use pyro_unlearn.freeze(guide).mode (numeric)"
        )


_SCALAR = torch.Size()


class _FlowPosterior(ZukoToPyro):
    # Pyro's ZukoToPyro draws only through __call__; its .sample(shape) raises
    # NotImplementedError. Users of get_posterior() expect the torch methods to work.
    def rsample(self, sample_shape: torch.Size = _SCALAR) -> torch.Tensor:
        return self(sample_shape)

    def sample(self, sample_shape: torch.Size = _SCALAR) -> torch.Tensor:
        with torch.no_grad():
            return self(sample_shape)


def _start_at_identity(flow: zuko.flows.Flow) -> None:
    # Zero each MADE's output layer: every affine transform starts as the identity, so the guide
    # starts as exactly N(init_loc, init_scale²) (as Pyro's Gaussian autoguides) and learns the
    # flow's departures from it, instead of from a random warp.
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, zuko.nn.MaskedMLP):
                m[-1].weight.zero_()
                m[-1].bias.zero_()


def _transforms(flow: zuko.flows.Flow) -> list:
    transform = flow.transform
    return list(transform) if isinstance(transform, torch.nn.ModuleList) else [transform]
