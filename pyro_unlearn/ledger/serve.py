"""Serving the pending deletion requests of a ledger: one :func:`~pyro_unlearn.forget` call
between a read of the ledger and one write transaction."""

from __future__ import annotations

import contextlib
import inspect
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch

from ..forget import ForgetResult, forget
from ..posterior import FrozenPosterior, freeze
from ..trust import without_fit_check
from .schema import read, write
from .store import (
    LedgerError,
    decode_tensors,
    encode_tensors,
    json_value,
    row_arguments,
    take_rows,
    write_rows,
)

__all__ = [
    "FORGET_OPTIONS",
    "ServeRecord",
    "load_posterior",
    "now",
    "serve_pending",
    "write_retraining",
]

_SIGNATURE = inspect.signature(forget).parameters
#: The keyword arguments of :func:`~pyro_unlearn.forget` that are options (any other keyword
#: argument of a serve goes to the model and guide, as in ``forget``).
FORGET_OPTIONS = frozenset(
    name
    for name, p in _SIGNATURE.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("erased", "plate", "posterior")
)


@dataclass(kw_only=True)
class ServeRecord:
    """What :meth:`RequestLedger.serve <pyro_unlearn.ledger.RequestLedger.serve>` returns.

    Attributes:
        id: the serve's event id in the ledger's history.
        status: ``"served"`` (the unlearned posterior is now the ledger's current one) or
            ``"retrain advised"`` (the trust verdict was ``"retrain"``: the posterior was
            recorded but not installed, the requests stay pending).
        installed: whether the unlearned posterior became the current one.
        requests: the ids of the requests whose rows this serve unlearned (lazy: every request
            since the last retraining; chained: the pending ones).
        rows: how many rows were unlearned.
        method: the unlearning method (as the result reports it, or as passed).
        lam: the adjusted likelihood's λ.
        verdict: the trust verdict (``None`` when not diagnosed).
        result: :func:`~pyro_unlearn.forget`'s result.
    """

    id: int
    status: str
    installed: bool
    requests: list[int]
    rows: int
    method: str
    lam: float
    verdict: str | None
    result: ForgetResult

    def summary(self) -> str:
        """One line: status, rows and requests, method, verdict and its explanation."""
        return (
            f"serve {self.id}: {self.status}; {self.rows} rows of requests {self.requests} by "
            f"{self.method} (λ={self.lam:g}); {self.result.summary()}"
        )


def now() -> str:
    """The time, UTC, ISO 8601 to the microsecond: the ledger's timestamps."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def load_posterior(
    conn: sqlite3.Connection, posterior_id: int, guide: Callable, args: tuple, kwargs: dict
) -> FrozenPosterior:
    """The stored posterior ``posterior_id``, checked against its checksum, loaded into a
    posterior frozen from ``guide`` (which gives its structure)."""
    row = conn.execute(
        "SELECT state, sha256 FROM posteriors WHERE id = ?", (posterior_id,)
    ).fetchone()
    if row is None:
        raise LedgerError(f"the ledger lacks its posterior {posterior_id}")
    state = decode_tensors(row[0], row[1], f"posterior {posterior_id}")
    return freeze(guide, *args, **kwargs).load_state_dict(state)


def _meta(conn: sqlite3.Connection, name: str) -> Any:
    return json.loads(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])


def _snapshot(conn: sqlite3.Connection, policy: str) -> dict[str, Any]:
    """What a serve needs, read in one transaction: the generation, the posterior to start
    from, and each request to unlearn with its rows' positions and kept rows."""
    with read(conn):
        since = _meta(conn, "since")
        pending = "served_by IS NULL" if policy == "chained" else "id > ?"
        requests = conn.execute(
            "SELECT e.id, e.served_by, k.data, k.sha256 FROM events e LEFT JOIN kept k "
            f"ON k.request = e.id WHERE e.kind = 'request' AND e.new_keys != '[]' AND {pending} "
            "ORDER BY e.id",
            () if policy == "chained" else (since,),
        ).fetchall()
        positions = {
            r: [p for (p,) in conn.execute("SELECT position FROM rows WHERE erased_by = ?", (r,))]
            for r, *_ in requests
        }
        return {
            "generation": _meta(conn, "generation"),
            "start": _meta(conn, "original" if policy == "lazy" else "current"),
            "requests": requests,
            "positions": positions,
            "pending": [r for r, served_by, *_ in requests if served_by is None],
        }


def _erased_data(snap: dict, policy: str, args: tuple, kwargs: dict, num_rows: int):
    """The call's data with the kept rows written back, the erased positions, and the rows to
    keep (lazy: those of requests not kept yet; chained: none)."""
    names = row_arguments(args, kwargs, num_rows)
    device = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).device
    to_keep: dict[int, dict[str, torch.Tensor]] = {}
    for request, _, blob, digest in snap["requests"]:
        where = torch.tensor(snap["positions"][request], dtype=torch.long, device=device)
        if blob is not None:
            rows = decode_tensors(blob, digest, f"kept rows of request {request}")
            args, kwargs = write_rows(args, kwargs, names, where, rows)
        elif policy == "lazy":
            to_keep[request] = take_rows(args, kwargs, names, where)
    every = sorted(p for r, *_ in snap["requests"] for p in snap["positions"][r])
    return tuple(args), dict(kwargs), torch.tensor(every, dtype=torch.long, device=device), to_keep


def serve_pending(
    conn: sqlite3.Connection,
    policy: str,
    num_rows: int,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    plate: Any,
) -> ServeRecord | None:
    """Serve the pending requests (:meth:`RequestLedger.serve
    <pyro_unlearn.ledger.RequestLedger.serve>` documents it); ``None`` when none is pending."""
    snap = _snapshot(conn, policy)
    if not snap["pending"]:
        return None
    options = {k: v for k, v in kwargs.items() if k in FORGET_OPTIONS}
    model_kwargs = {k: v for k, v in kwargs.items() if k not in FORGET_OPTIONS}
    data, model_kwargs, erased, to_keep = _erased_data(snap, policy, args, model_kwargs, num_rows)
    start = load_posterior(conn, snap["start"], guide, data, model_kwargs)
    # a chained serve starts from the last unlearned posterior, not fitted to the rows served
    # before, which the data still hold: q(θ|D)'s own check (against all of D) does not apply
    from_original = snap["start"] == _meta(conn, "original")
    with contextlib.nullcontext() if from_original else without_fit_check():
        result = forget(
            model, guide, *data, erased=erased, plate=plate, posterior=start, **options,
            **model_kwargs,
        )  # fmt: skip
    blob, digest = encode_tensors(result.posterior.state_dict())
    kept = {r: encode_tensors(rows) for r, rows in to_keep.items()}
    covered = [r for r, *_ in snap["requests"]]
    installed = result.verdict != "retrain"
    method = getattr(result, "method", None) or options.get("method", _SIGNATURE["method"].default)
    lam = getattr(result, "lam", None)  # under method="auto": the attempt chosen
    lam = float(options.get("lam", _SIGNATURE["lam"].default) if lam is None else lam)
    with write(conn):
        if _meta(conn, "generation") != snap["generation"]:
            raise LedgerError(
                "the ledger changed while this serve ran (another process served or recorded a "
                "retraining); nothing was written: serve again"
            )
        serve_id = _write_serve(
            conn,
            policy,
            snap,
            result,
            (blob, digest),
            kept,
            covered,
            installed,
            method,
            lam,
            options,
        )
    return ServeRecord(
        id=serve_id,
        status="served" if installed else "retrain advised",
        installed=installed,
        requests=covered,
        rows=len(erased),
        method=str(method),
        lam=lam,
        verdict=result.verdict,
        result=result,
    )


def _write_serve(
    conn: sqlite3.Connection,
    policy: str,
    snap: dict,
    result: ForgetResult,
    posterior: tuple[bytes, str],
    kept: dict[int, tuple[bytes, str]],
    covered: list[int],
    installed: bool,
    method: Any,
    lam: float,
    options: dict,
) -> int:
    """Every write of one serve (inside the caller's transaction); the serve's event id."""
    time = now()
    posterior_id = conn.execute(
        "INSERT INTO posteriors (kind, created, state, sha256) VALUES ('unlearned', ?, ?, ?)",
        (time, *posterior),
    ).lastrowid
    status = "served" if installed else "retrain advised"
    summary = result.summary()
    if not installed:
        summary = f"retrain advised: the posterior was recorded, not installed; {summary}"
    serve_id = conn.execute(
        "INSERT INTO events (time, kind, covers, policy, method, lam, options, seconds, steps, "
        "converged, verdict, summary, trust, posterior, status) "
        "VALUES (?, 'serve', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            time,
            json.dumps(covered),
            policy,
            str(method),
            lam,
            json.dumps(json_value(options)),
            float(result.seconds),
            result.num_steps,
            int(bool(result.converged)),
            result.verdict,
            summary,
            json.dumps(json_value(result.trust_row)),
            posterior_id,
            status,
        ),
    ).lastrowid
    conn.executemany(
        "INSERT INTO kept (request, positions, data, sha256) VALUES (?, ?, ?, ?)",
        [(r, json.dumps(snap["positions"][r]), b, d) for r, (b, d) in kept.items()],
    )
    if installed:
        conn.executemany(
            "UPDATE events SET served_by = ?, status = 'served' WHERE id = ?",
            [(serve_id, r) for r in snap["pending"]],
        )
        conn.execute(
            "UPDATE meta SET value = ? WHERE name = 'current'", (json.dumps(posterior_id),)
        )
    conn.execute(
        "UPDATE meta SET value = ? WHERE name = 'generation'", (json.dumps(snap["generation"] + 1),)
    )
    return serve_id


def write_retraining(
    conn: sqlite3.Connection, posterior: tuple[bytes, str], note: str, pending: list[int]
) -> int:
    """Every write of a retraining (inside the caller's transaction): the new q(θ|D), its
    event, the pending requests served by it, the kept rows purged; the event's id."""
    time = now()
    posterior_id = conn.execute(
        "INSERT INTO posteriors (kind, created, state, sha256) VALUES ('original', ?, ?, ?)",
        (time, *posterior),
    ).lastrowid
    purged = conn.execute("SELECT COUNT(*) FROM kept").fetchone()[0]
    event = conn.execute(
        "INSERT INTO events (time, kind, reason, covers, posterior, status) "
        "VALUES (?, 'retraining', ?, ?, ?, ?)",
        (
            time,
            note,
            json.dumps(pending),
            posterior_id,
            f"purged rows of {purged} requests",
        ),
    ).lastrowid
    conn.executemany(
        "UPDATE events SET served_by = ?, status = 'retrained' WHERE id = ?",
        [(event, r) for r in pending],
    )
    conn.execute("DELETE FROM kept")
    generation = json.loads(
        conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()[0]
    )
    for name, value in (
        ("original", posterior_id),
        ("current", posterior_id),
        ("since", event),
        ("generation", generation + 1),
    ):
        conn.execute("UPDATE meta SET value = ? WHERE name = ?", (json.dumps(value), name))
    return event
