"""The ledger's SQLite file: its tables, its version, and opening it safely."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .store import CorruptLedgerError, LedgerError

__all__ = [
    "APPLICATION_ID",
    "SCHEMA",
    "SCHEMA_VERSION",
    "connect",
    "create_file",
    "read",
    "write",
]

#: ``PRAGMA application_id`` of a ledger file (the bytes "PUlg"): what tells it from any other
#: SQLite database.
APPLICATION_ID = 0x50556C67
#: ``PRAGMA user_version`` of the current schema.
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE posteriors (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('original', 'unlearned')),
    created TEXT NOT NULL,
    state BLOB NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('create', 'request', 'serve', 'retraining')),
    reason TEXT,
    keys TEXT,
    new_keys TEXT,
    served_by INTEGER REFERENCES events(id),
    covers TEXT,
    policy TEXT,
    method TEXT,
    lam REAL,
    options TEXT,
    seconds REAL,
    steps INTEGER,
    converged INTEGER,
    verdict TEXT,
    summary TEXT,
    trust TEXT,
    posterior INTEGER REFERENCES posteriors(id),
    status TEXT
);
CREATE TABLE rows (
    position INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    erased_by INTEGER REFERENCES events(id)
);
CREATE TABLE kept (
    request INTEGER PRIMARY KEY REFERENCES events(id),
    positions TEXT NOT NULL,
    data BLOB NOT NULL,
    sha256 TEXT NOT NULL
);
"""

_TABLES = {"meta", "posteriors", "events", "rows", "kept"}


def _configure(conn: sqlite3.Connection) -> None:
    # secure_delete: a purge overwrites the erased rows' bytes instead of leaving them in free
    # pages; synchronous=FULL: a commit is on disk when it returns.
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA synchronous = FULL")


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open an existing ledger file, after checking that it is one and that it is intact.

    Raises:
        FileNotFoundError: when there is no file at ``path``.
        LedgerError: when the file is not a ledger (not SQLite, another SQLite database, or a
            newer schema).
        CorruptLedgerError: when SQLite's ``quick_check`` finds damage (a truncated file,
            flipped bytes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ledger file at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=60.0)
    conn.isolation_level = None  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
    try:
        _check_file(conn, path)
        _configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_file(conn: sqlite3.Connection, path: Path) -> None:
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as error:
        raise LedgerError(f"{path} is not a request ledger: {error}") from error
    if application_id != APPLICATION_ID:
        raise LedgerError(
            f"{path} is not a request ledger (an SQLite file with application_id "
            f"{application_id:#x}, not {APPLICATION_ID:#x}); create one with "
            "RequestLedger.create"
        )
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as error:
        raise CorruptLedgerError(f"the ledger {path} is damaged: {error}") from error
    _check_length(path)
    if problems != ["ok"]:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise CorruptLedgerError(
            f"the ledger {path} is damaged (SQLite's quick_check: {shown}); restore it from a "
            "backup"
        )
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"{path} is a ledger of schema version {version}; this pyro_unlearn reads versions "
            f"up to {SCHEMA_VERSION}: upgrade pyro_unlearn"
        )
    if not _TABLES <= tables:
        raise CorruptLedgerError(f"the ledger {path} lacks the table(s) {sorted(_TABLES - tables)}")


def _check_length(path: Path) -> None:
    """A file shorter than its header's page count says was truncated: SQLite would read it as
    a smaller database, and its ``quick_check`` misses the loss when the lost pages were the
    last ones."""
    with open(path, "rb") as f:
        header = f.read(100)
        size = f.seek(0, os.SEEK_END)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if len(header) == 100 and size < pages * page_size:
        raise CorruptLedgerError(
            f"the ledger {path} is truncated: {size} bytes, its header says {pages} pages of "
            f"{page_size} bytes ({pages * page_size}); restore it from a backup"
        )


def create_file(path: str | os.PathLike, fill) -> None:
    """Create a ledger at ``path`` atomically: built in a temporary file beside it by
    ``fill(conn)`` inside one transaction, then linked into place, never over an existing file.

    Raises:
        FileExistsError: when ``path`` exists (nothing is written).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: open it with RequestLedger(path)")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.creating")
    temporary.unlink(missing_ok=True)
    try:
        conn = sqlite3.connect(temporary, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            _configure(conn)
            with write(conn):
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                fill(conn)
        finally:
            conn.close()  # the last connection checkpoints the WAL into the file
        os.link(temporary, path)  # fails, writing nothing, if path appeared meanwhile
    finally:
        for leftover in (temporary, *(Path(f"{temporary}{s}") for s in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken first, waiting for
    other writers): committed when the block ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextlib.contextmanager
def read(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every query in the block sees the same state of the file."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")
