"""The slices of a network that L-CODEC selects from (a Linear layer's output unit, a Conv
layer's filter) and their activations, read by forward hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Slice",
    "candidate_layers",
    "check_point_estimate",
    "collect_activations",
    "layer_slices",
]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Slice:
    """Output unit (Linear) or filter (Conv) ``index`` of the layer named ``layer``: the
    parameters ``weight[index]`` and ``bias[index]``."""

    layer: str
    index: int

    def __str__(self) -> str:
        return f"{self.layer or '<model>'}[{self.index}]"


def check_point_estimate(model: nn.Module) -> None:
    """Raise ``TypeError`` unless ``model`` is an ``nn.Module`` whose parameters are plain
    ``nn.Parameter`` s (no ``PyroSample``/``PyroParam``): L-CODEC needs a point estimate."""
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


def candidate_layers(
    model: nn.Module, layers: Sequence[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """The (name, module) of the layers whose slices are candidates: ``layers`` checked, or
    every trainable Linear/Conv1d/2d/3d layer."""
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


def layer_slices(layers: list[tuple[str, nn.Module]]) -> list[Slice]:
    """Every slice of the given layers, layer by layer: the columns of the activations."""
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
    chosen = candidate_layers(model, layers)
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
    return torch.cat([captured[name] for name, _ in chosen], dim=1), layer_slices(chosen)
