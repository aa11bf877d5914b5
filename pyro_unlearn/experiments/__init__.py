"""The papers' reproductions, used by the ``pyro-unlearn`` command and the tutorials."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """A result value as strict JSON can hold it: NaN becomes None (``json.dumps`` would write
    ``NaN``, which is not JSON). Example::

        >>> json_safe(float("nan")), json_safe(0.5)
        (None, 0.5)
    """
    return None if isinstance(value, float) and math.isnan(value) else value
