"""The request ledger: deletion requests, the unlearnings that served them, and the posteriors,
in one SQLite file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..posterior import FrozenPosterior
from .audit import read_history, stored_posteriors
from .schema import SCHEMA_VERSION, connect, create_file, read, write
from .serve import ServeRecord, load_posterior, now, serve_pending, write_retraining
from .store import decode_tensors, encode_tensors, key_text, normalise_keys

__all__ = ["POLICIES", "RequestLedger"]

#: The serving policies: ``"lazy"`` (unlearn the union of all requests since the last retraining
#: from q(θ|D), keeping the erased rows until then) and ``"chained"`` (unlearn only the new
#: requests from the current posterior, keeping no rows).
POLICIES = ("lazy", "chained")


class RequestLedger:
    r"""A durable ledger of deletion requests, served by unlearning, in one SQLite file.

    It holds q(θ|D) (a :class:`~pyro_unlearn.FrozenPosterior`'s state, SHA-256 checked), the
    keys of the rows of the training data (one per row of the data plate, in its order), every
    request (time, keys, reason), every serve (the requests it covers, method, λ, options,
    seconds, the trust verdict and diagnostics) and the current unlearned posterior. Two
    policies, fixed at creation:

    * ``"lazy"`` (Nguyen et al. 2020): each serve unlearns the union D_e of every request since
      the last retraining from q(θ|D), q(θ|D_r) ≈ argmin_q KL-divergence to
      q(θ|D)/p_adj(D_e|θ), so errors do not accumulate; the erased rows are kept in the ledger
      (the data of the first serve that saw them) until :meth:`record_retraining` purges them.
    * ``"chained"``: each serve unlearns only the pending requests D_e⁽ᵏ⁾ from the current
      posterior, q_k ≈ q_{k-1}/p_adj(D_e⁽ᵏ⁾|θ); no row is ever kept, and each approximation
      error is carried into the next (the trust verdicts of the serves report it).

    Every change is one SQLite transaction: a failed or killed call leaves the file as it was,
    and several processes may file requests at once (SQLite's locking). A serve's trust verdict
    ``"retrain"`` is recorded as "retrain advised" and its posterior is not installed.

    Arguments:
        path: an existing ledger file (made by :meth:`create`).

    Raises:
        FileNotFoundError: when there is no file at ``path``.
        LedgerError: when the file is not a ledger.
        CorruptLedgerError: when it is damaged (SQLite's integrity check).

    References:
        Q. P. Nguyen, B. K. H. Low, P. Jaillet. Variational Bayesian Unlearning. NeurIPS 2020.

    Example::

        ledger = RequestLedger.create("model.ledger", pu.freeze(guide), keys=user_ids)
        ledger.request([17, 42], reason="account deleted")
        record = ledger.serve(model, guide, x, y, plate="data", method="rkl")
        record.status, record.verdict  # "served", "trusted"
        posterior = ledger.current(guide)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        with read(self._conn):
            meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
        self._meta = {name: json.loads(value) for name, value in meta.items()}

    # -- creating and opening ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        posterior: FrozenPosterior,
        keys: Any,
        *,
        policy: str = "lazy",
        plate: str | None = None,
        name: str = "",
    ) -> RequestLedger:
        """Create a ledger file at ``path`` holding q(θ|D) and the rows' keys.

        Arguments:
            path: the new file (refused if it exists).
            posterior: q(θ|D), frozen (:func:`pyro_unlearn.freeze`).
            keys: one key per row of the data plate, in its order: integers or strings
                (``range(len(y))``, user ids...), unique.
            policy: ``"lazy"`` or ``"chained"`` (:data:`POLICIES`).
            plate: the data plate's name, the default of :meth:`serve`'s ``plate``.
            name: a free-text name of the model.

        Returns:
            The open ledger.

        Raises:
            FileExistsError: when ``path`` exists.
            ValueError: for an unknown policy, no keys or duplicate keys.
            TypeError: for a posterior that is not frozen, or keys of other types.
        """
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(
                f"posterior must be a FrozenPosterior (pu.freeze(guide)), got "
                f"{type(posterior).__name__}"
            )
        texts = normalise_keys(keys)
        count = len(keys) if hasattr(keys, "__len__") and not isinstance(keys, str) else 1
        if len(texts) != count:
            raise ValueError(f"the keys must be unique: {count} keys, {len(texts)} distinct")
        if plate is not None and not isinstance(plate, str):
            raise TypeError(f"plate must be a plate's name, got {type(plate).__name__}")
        blob, digest = encode_tensors(posterior.state_dict())
        meta = {
            "format": "pyro_unlearn.ledger",
            "policy": policy,
            "plate": plate,
            "name": str(name),
            "num_rows": len(texts),
            "structure": {n: list(s) for n, s in posterior.site_shapes.items()},
            "created": now(),
            "original": 1,
            "current": 1,
            "generation": 0,
            "since": 1,  # the event that q(θ|D) comes from: creation, then each retraining
        }

        def fill(conn):
            conn.execute(
                "INSERT INTO posteriors (id, kind, created, state, sha256) "
                "VALUES (1, 'original', ?, ?, ?)",
                (meta["created"], blob, digest),
            )
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )
            conn.executemany(
                "INSERT INTO rows (position, key) VALUES (?, ?)", list(enumerate(texts))
            )
            conn.execute(
                "INSERT INTO events (id, time, kind, policy, posterior, status, reason) "
                "VALUES (1, ?, 'create', ?, 1, 'created', ?)",
                (meta["created"], policy, f"{len(texts)} rows; {name}".strip("; ")),
            )

        create_file(path, fill)
        return cls(path)

    @property
    def policy(self) -> str:
        """``"lazy"`` or ``"chained"``."""
        return self._meta["policy"]

    @property
    def num_rows(self) -> int:
        """The number of rows (keys) of the training data."""
        return self._meta["num_rows"]

    def close(self) -> None:
        """Close the SQLite connection."""
        self._conn.close()

    def __enter__(self) -> RequestLedger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RequestLedger({str(self.path)!r}, policy={self.policy!r}, rows={self.num_rows})"

    # -- requests -----------------------------------------------------------------------------
    def request(self, keys: Any, reason: str = "") -> int:
        """File a deletion request for the rows ``keys``.

        Idempotent: keys erased by an earlier request are recorded but change nothing (a
        request of only such keys is ``"already erased"`` and never pending). Unknown keys
        refuse the whole request, writing nothing.

        Arguments:
            keys: one row key or several (integers or strings, as given at creation).
            reason: free text, recorded with the request.

        Returns:
            The request's id.

        Raises:
            ValueError: naming the keys the ledger does not know.
            TypeError: for keys that are neither integers nor strings, or a reason not a str.
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {type(reason).__name__}")
        texts = normalise_keys(keys)
        with write(self._conn) as conn:
            found = dict(
                conn.execute(
                    "SELECT key, erased_by FROM rows WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(texts),),
                ).fetchall()
            )
            unknown = [t for t in texts if t not in found]
            if unknown:
                shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
                raise ValueError(
                    f"the ledger knows no row with the key(s) {shown} ({len(unknown)} of "
                    f"{len(texts)}); nothing was recorded"
                )
            new = [t for t in texts if found[t] is None]
            request_id = conn.execute(
                "INSERT INTO events (time, kind, reason, keys, new_keys, status) "
                "VALUES (?, 'request', ?, ?, ?, ?)",
                (
                    now(),
                    reason,
                    "[" + ",".join(texts) + "]",
                    "[" + ",".join(new) + "]",
                    "pending" if new else "already erased",
                ),
            ).lastrowid
            conn.execute(
                "UPDATE rows SET erased_by = ? WHERE key IN (SELECT value FROM json_each(?))",
                (request_id, json.dumps(new)),
            )
        return request_id

    def pending(self) -> list[int]:
        """The ids of the requests not yet served (nor covered by a retraining)."""
        rows = self._conn.execute(
            "SELECT id FROM events WHERE kind = 'request' AND served_by IS NULL "
            "AND new_keys != '[]' ORDER BY id"
        )
        return [r for (r,) in rows]

    def erased(self) -> list[Any]:
        """The keys of every row erased by a request, in row order."""
        rows = self._conn.execute(
            "SELECT key FROM rows WHERE erased_by IS NOT NULL ORDER BY position"
        )
        return [json.loads(k) for (k,) in rows]

    def is_erased(self, key: Any) -> bool:
        """Whether the row ``key`` was erased by a request (``ValueError`` for unknown keys)."""
        row = self._conn.execute(
            "SELECT erased_by FROM rows WHERE key = ?", (key_text(key),)
        ).fetchone()
        if row is None:
            raise ValueError(f"the ledger knows no row with the key {key!r}")
        return row[0] is not None

    # -- serving ------------------------------------------------------------------------------
    def serve(
        self, model: Callable, guide: Callable, *args: Any, plate: Any = None, **kwargs: Any
    ) -> ServeRecord | None:
        r"""Unlearn the pending requests with :func:`~pyro_unlearn.forget` and record it.

        ``lazy``: unlearns the rows of every request since the last retraining from q(θ|D)
        (``forget(..., erased=union, posterior=q(θ|D))``); the rows of requests served before
        are written back into the data from the ledger, so the caller may have deleted them,
        and the new requests' rows are kept. ``chained``: unlearns the pending requests' rows
        from the current posterior; the values of rows served before are not read.

        The ledger is read, the unlearning runs without holding a lock (other processes may
        file requests meanwhile), then one transaction records the serve, its posterior, the
        kept rows and, unless the verdict is ``"retrain"``, installs the posterior as current
        and marks the requests served. A serve that fails or is killed writes nothing.

        Arguments:
            model: the model, as trained.
            guide: its guide (trained in place, as by ``forget``); it gives the structure of
                the stored posteriors.
            args: the model's data, rows along the first dimension in the ledger's key order
                (every tensor argument with :attr:`num_rows` rows is row data).
            plate: the data plate (default: the one given at creation).
            kwargs: options of :func:`~pyro_unlearn.forget` (``method``, ``lam``,
                ``num_steps``...) and keyword arguments of the model.

        Returns:
            A :class:`~pyro_unlearn.ledger.ServeRecord` (``status`` ``"served"`` or
            ``"retrain advised"``), or ``None`` when no request is pending.

        Raises:
            LedgerError: when another process served or recorded a retraining meanwhile.
            ValueError, TypeError: as :func:`~pyro_unlearn.forget` raises them; nothing is
                recorded.
        """
        plate = self._meta["plate"] if plate is None else plate
        return serve_pending(
            self._conn, self.policy, self.num_rows, model, guide, args, kwargs, plate
        )

    # -- posteriors ---------------------------------------------------------------------------
    def _posterior_id(self, which: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (which,)).fetchone()
        return json.loads(row[0])

    def current(self, guide: Callable, *args: Any, **kwargs: Any) -> FrozenPosterior:
        """The current posterior (the last one installed; q(θ|D) before any serve), loaded into
        a posterior frozen from ``guide`` (and its arguments), SHA-256 checked.

        Raises:
            CorruptLedgerError: when the stored state does not match its checksum.
            ValueError: when ``guide`` has another structure than the stored posterior.
        """
        return load_posterior(self._conn, self._posterior_id("current"), guide, args, kwargs)

    def original(self, guide: Callable, *args: Any, **kwargs: Any) -> FrozenPosterior:
        """q(θ|D): the posterior of the creation or of the last retraining (as
        :meth:`current`)."""
        return load_posterior(self._conn, self._posterior_id("original"), guide, args, kwargs)

    def current_state(self) -> dict[str, Any]:
        """The current posterior's state dict (``FrozenPosterior.load_state_dict`` takes it),
        SHA-256 checked, on the CPU."""
        posterior_id = self._posterior_id("current")
        row = self._conn.execute(
            "SELECT state, sha256 FROM posteriors WHERE id = ?", (posterior_id,)
        ).fetchone()
        return decode_tensors(row[0], row[1], f"posterior {posterior_id}")

    def record_retraining(self, posterior: FrozenPosterior, note: str = "") -> int:
        """Record a retraining: ``posterior`` (trained on the data without every erased row)
        becomes q(θ|D) and the current posterior, every pending request counts as served by
        it, and the kept rows are purged (overwritten on disk: SQLite's ``secure_delete``).

        Returns:
            The retraining's event id.

        Raises:
            TypeError: when ``posterior`` is not a :class:`~pyro_unlearn.FrozenPosterior`.
        """
        if not isinstance(posterior, FrozenPosterior):
            raise TypeError(f"posterior must be a FrozenPosterior, got {type(posterior).__name__}")
        blob, digest = encode_tensors(posterior.state_dict())
        with write(self._conn) as conn:
            event = write_retraining(conn, (blob, digest), note, self.pending())
        # the purged pages' old images may linger in the write-ahead log: fold it in and empty it
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return event

    def kept_rows(self) -> int:
        """How many erased rows the ledger keeps (lazy policy, until a retraining)."""
        rows = self._conn.execute("SELECT positions FROM kept").fetchall()
        return sum(len(json.loads(p)) for (p,) in rows)

    # -- audit --------------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        """Every event, oldest first: creation, requests, serves and retrainings, one dict each
        (``id``, ``time``, ``kind``, ``status``, ``reason``, ``keys``, ``new_keys``,
        ``served_by``, ``covers``, ``policy``, ``method``, ``lam``, ``options``, ``seconds``,
        ``steps``, ``converged``, ``verdict``, ``summary``, ``trust``, ``posterior``; ``None``
        where a field does not apply)."""
        return read_history(self._conn)

    def describe(self) -> dict[str, Any]:
        """The ledger's settings and state: path, schema version, policy, name, rows, erased
        and kept rows, pending requests, posteriors (id, kind, SHA-256, bytes)."""
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            **{k: v for k, v in self._meta.items() if k not in ("generation", "since")},
            "original": self._posterior_id("original"),
            "current": self._posterior_id("current"),
            "erased_rows": len(self.erased()),
            "kept_rows": self.kept_rows(),
            "pending": self.pending(),
            "posteriors": stored_posteriors(self._conn),
        }

    def export_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`describe` and :meth:`history` as one JSON file (strict JSON: NaN is
        ``null``), atomically. Returns the path."""
        path = Path(path)
        text = json.dumps({"ledger": self.describe(), "history": self.history()}, indent=1)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
        return path
