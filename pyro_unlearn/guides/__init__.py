"""Guides Pyro lacks: normalising-flow autoguides backed by zuko."""

from .flows import FLOW_PRESETS, AutoZukoFlow

__all__ = ["FLOW_PRESETS", "AutoZukoFlow"]
