"""Reading a ledger's audit trail: its events and its stored posteriors, as plain values."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

__all__ = ["read_history", "stored_posteriors"]

_JSON_COLUMNS = ("keys", "new_keys", "covers", "options", "trust")


def read_history(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every event of the ledger, oldest first, one dict each, its JSON columns decoded (row
    keys back to the integers and strings they were) and ``converged`` a bool."""
    cursor = conn.execute("SELECT * FROM events ORDER BY id")
    names = [d[0] for d in cursor.description]
    events = []
    for row in cursor:
        event = dict(zip(names, row, strict=True))
        for column in _JSON_COLUMNS:
            if event[column] is not None:
                event[column] = json.loads(event[column])
        if event["converged"] is not None:
            event["converged"] = bool(event["converged"])
        events.append(event)
    return events


def stored_posteriors(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every stored posterior: ``id``, ``kind`` (``"original"``: q(θ|D) of the creation or of a
    retraining; ``"unlearned"``: a serve's), ``created``, ``sha256`` and ``bytes``."""
    rows = conn.execute(
        "SELECT id, kind, created, sha256, length(state) FROM posteriors ORDER BY id"
    ).fetchall()
    return [dict(zip(("id", "kind", "created", "sha256", "bytes"), r, strict=True)) for r in rows]
