"""Guides: normalising-flow autoguides backed by zuko, and reading/writing Gaussian guides."""

from .flows import FLOW_PRESETS, AutoZukoFlow
from .gaussian import (
    GAUSSIAN_DISTRIBUTIONS,
    GAUSSIAN_GUIDES,
    LatentLayout,
    LatentSite,
    is_gaussian,
    latent_layout,
    read_gaussian,
    write_gaussian,
)

__all__ = [
    "FLOW_PRESETS",
    "GAUSSIAN_DISTRIBUTIONS",
    "GAUSSIAN_GUIDES",
    "AutoZukoFlow",
    "LatentLayout",
    "LatentSite",
    "is_gaussian",
    "latent_layout",
    "read_gaussian",
    "write_gaussian",
]
