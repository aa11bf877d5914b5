"""Tensors in and out of the ledger: checksummed ``torch.save`` blobs, row keys, row slices."""

from __future__ import annotations

import hashlib
import io
import json
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "CorruptLedgerError",
    "LedgerError",
    "RowKey",
    "decode_tensors",
    "encode_tensors",
    "json_value",
    "key_text",
    "normalise_keys",
    "row_arguments",
    "take_rows",
    "write_rows",
]

#: A row's key: an integer or a string (``1`` and ``"1"`` are different keys).
RowKey = int | str


class LedgerError(Exception):
    """A file that is not a request ledger, or a ledger that cannot do what was asked."""


class CorruptLedgerError(LedgerError):
    """A ledger file whose bytes are damaged: SQLite's integrity check fails, or a stored
    posterior or row blob does not match its SHA-256 checksum."""


def encode_tensors(state: Mapping[str, Any]) -> tuple[bytes, str]:
    """``torch.save`` a state (tensors and plain values) into bytes, with their SHA-256.

    Example:
        >>> blob, digest = encode_tensors({"loc": torch.zeros(2)})
        >>> decode_tensors(blob, digest, "a test")["loc"]
        tensor([0., 0.])
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    blob = buffer.getvalue()
    return blob, hashlib.sha256(blob).hexdigest()


def decode_tensors(blob: bytes | None, digest: str | None, what: str) -> dict[str, Any]:
    """The state :func:`encode_tensors` wrote, after checking its SHA-256; loaded with
    ``weights_only=True`` onto the CPU (the caller moves tensors where they belong).

    Raises:
        CorruptLedgerError: naming ``what`` when the blob is missing, does not match its
            checksum, or does not load.
    """
    if blob is None or digest is None:
        raise CorruptLedgerError(f"the ledger's {what} is missing its data or its checksum")
    blob = bytes(blob)
    found = hashlib.sha256(blob).hexdigest()
    if found != digest:
        raise CorruptLedgerError(
            f"the ledger's {what} is corrupted: its SHA-256 is {found[:16]}..., the ledger "
            f"recorded {digest[:16]}... ({len(blob)} bytes); restore the file from a backup"
        )
    try:
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 (any unpickling failure means a bad blob)
        raise CorruptLedgerError(f"the ledger's {what} does not load: {error}") from error
    if not isinstance(state, dict):
        raise CorruptLedgerError(f"the ledger's {what} is not a state dict")
    return state


def key_text(key: Any) -> str:
    """A row key as the ledger stores it: JSON, so that ``1`` and ``"1"`` stay apart.

    Example:
        >>> key_text(3), key_text("3")
        ('3', '"3"')
    """
    if isinstance(key, str):
        return json.dumps(key)
    if isinstance(key, bool):
        raise TypeError(f"a row key is an integer or a string, not a bool ({key!r})")
    if isinstance(key, torch.Tensor) and key.dim() == 0 and not key.is_floating_point():
        key = key.item()
    try:
        return json.dumps(operator.index(key))
    except TypeError:
        raise TypeError(
            f"a row key is an integer or a string, got {type(key).__name__} ({key!r})"
        ) from None


def normalise_keys(keys: Any, what: str = "keys") -> list[str]:
    """Keys (one key, or an iterable of them; a tensor of integers) as :func:`key_text`
    strings, duplicates dropped, in the order given.

    Example:
        >>> normalise_keys([2, "a", 2])
        ['2', '"a"']
    """
    if isinstance(keys, torch.Tensor):
        keys = keys.reshape(-1).tolist()
    elif isinstance(keys, (str, int)) or not isinstance(keys, Iterable):
        keys = [keys]
    texts = list(dict.fromkeys(key_text(k) for k in keys))
    if not texts:
        raise ValueError(f"{what} is empty: name at least one row")
    return texts


def row_arguments(args: Sequence[Any], kwargs: Mapping[str, Any], num_rows: int) -> list[Any]:
    """The names of the row-data arguments: the positions in ``args`` and the names in
    ``kwargs`` of the tensors whose first dimension has ``num_rows`` entries (one per row of
    the plate); every other argument passes through as it is."""
    names: list[Any] = [i for i, a in enumerate(args) if _is_rows(a, num_rows)]
    names += [k for k, a in kwargs.items() if _is_rows(a, num_rows)]
    if not names:
        raise ValueError(
            f"none of the data arguments is a tensor with {num_rows} rows (its first "
            "dimension): pass the data in the ledger's row order, one row per key"
        )
    return names


def _is_rows(value: Any, num_rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_rows


def _get(args: Sequence[Any], kwargs: Mapping[str, Any], name: Any) -> torch.Tensor:
    return args[name] if isinstance(name, int) else kwargs[name]


def take_rows(
    args: Sequence[Any], kwargs: Mapping[str, Any], names: list[Any], positions: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The rows at ``positions`` of each row-data argument, by ``str(name)``, detached."""
    return {
        str(n): _get(args, kwargs, n)
        .index_select(0, positions.to(_get(args, kwargs, n).device))
        .detach()
        .clone()
        for n in names
    }


def write_rows(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    names: list[Any],
    positions: torch.Tensor,
    rows: Mapping[str, torch.Tensor],
) -> tuple[list[Any], dict[str, Any]]:
    """Copies of ``args`` and ``kwargs`` whose row-data arguments hold ``rows`` at
    ``positions`` (the kept rows of earlier requests, written back); the inputs are unchanged.

    Raises:
        ValueError: when the kept rows do not fit the arguments (another argument list, or
            other shapes or dtypes than when they were kept).
    """
    args, kwargs = list(args), dict(kwargs)
    if sorted(rows) != sorted(str(n) for n in names):
        raise ValueError(
            f"the ledger kept rows of the data arguments {sorted(rows)}, but this call's row "
            f"arguments are {sorted(str(n) for n in names)}: pass the data as when it was kept"
        )
    for name in names:
        value, kept = _get(args, kwargs, name), rows[str(name)]
        if kept.shape[1:] != value.shape[1:] or kept.dtype != value.dtype:
            raise ValueError(
                f"the kept rows of data argument {name!r} are {kept.dtype} of row shape "
                f"{tuple(kept.shape[1:])}, this call's are {value.dtype} of "
                f"{tuple(value.shape[1:])}"
            )
        index = positions.to(value.device)
        filled = value.detach().index_copy(0, index, kept.to(value.device))
        if isinstance(name, int):
            args[name] = filled
        else:
            kwargs[name] = filled
    return args, kwargs


def json_value(value: Any) -> Any:
    """A value as strict JSON holds it: NaN and ±inf become ``None``, tensors lists, tuples
    lists, anything else without a JSON form its ``repr``.

    Example:
        >>> json_value({"k": float("nan"), "t": (1, 2.5)})
        {'k': None, 't': [1, 2.5]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, torch.Tensor):
        return json_value(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return repr(value)
