"""ArviZ ``InferenceData`` of posteriors, for ``az.summary`` and ``az.plot_forest``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyro.poutine.util import site_is_subsample

from ._sampling import vectorized_traces

if TYPE_CHECKING:
    import arviz

__all__ = ["to_inference_data"]


def to_inference_data(
    posteriors: dict[str, Callable[..., Any]],
    model: Callable[..., Any],
    *args: Any,
    num_samples: int = 1000,
    **kwargs: Any,
) -> dict[str, arviz.InferenceData]:
    """ArviZ ``InferenceData`` of each named posterior: draws of the model's latent sites.

    θ_s ~ q, s = 1..S, in one plate without gradients, the model replayed on them: each latent
    sample site of the model becomes a variable of the posterior group in the constrained space,
    of shape ``(1, num_samples, *site_shape)`` (one chain). Then e.g.
    ``az.summary(idata["retrained"])`` or ``az.plot_forest(list(d.values()), model_names=list(d))``.

    Arguments:
        posteriors: ``{name: posterior}``; a posterior is a live AutoGuide, a guide function or
            a :class:`~pyro_unlearn.FrozenPosterior`.
        model: the Pyro model.
        *args: the model's (and the guides') arguments.
        num_samples: S, the draws per posterior.
        **kwargs: the model's keyword arguments.

    Returns:
        ``{name: arviz.InferenceData}``, in the order of ``posteriors``.

    References:
        R. Kumar, C. Carroll, A. Hartikainen, O. Martin. ArviZ a unified library for
        exploratory analysis of Bayesian models in Python. Journal of Open Source Software, 2019.

    Example (not run: importing arviz takes seconds)::

        d = to_inference_data({"retrained": retrained, "unlearned": unlearned}, model, x, y)
        az.summary(d["unlearned"])
    """
    if not isinstance(posteriors, Mapping) or not posteriors:
        raise ValueError("posteriors is empty: give at least one {name: posterior}")
    import arviz as az

    out = {}
    for name, posterior in posteriors.items():
        _, trace, once, _ = vectorized_traces(
            model, posterior, args, kwargs, num_samples, "_inference_data_samples"
        )
        draws = {}
        for site_name, site in once.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            shape = site["value"].shape
            value = trace.nodes[site_name]["value"].detach()
            if value.numel() != num_samples * shape.numel():  # constant across samples
                value = value.expand(num_samples, *shape)
            draws[site_name] = value.reshape(1, num_samples, *shape).cpu().numpy()
        out[name] = az.from_dict(posterior=draws)
    return out
