"""``pyro-unlearn ledger PATH [--json OUT]``: a ledger's audit trail as a table, and as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .ledger import RequestLedger
from .store import LedgerError

__all__ = ["COLUMNS", "add_subcommand", "format_history", "main", "run"]

#: The columns of the history table: (heading, width).
COLUMNS = (
    ("id", 4),
    ("time (UTC)", 19),
    ("kind", 10),
    ("status", 16),
    ("rows", 5),
    ("requests", 12),
    ("method", 6),
    ("λ", 7),
    ("verdict", 11),
    ("seconds", 7),
    ("reason / summary", 40),
)


def _cells(event: dict[str, Any]) -> list[str]:
    keys, new = event["keys"] or [], event["new_keys"] or []
    rows = f"{len(new)}/{len(keys)}" if event["kind"] == "request" else ""
    covers = event["covers"]
    text = event["reason"] or event["summary"] or ""
    return [
        str(event["id"]),
        event["time"][:19].replace("T", " "),
        event["kind"],
        event["status"] or "",
        rows,
        _ids(covers),
        event["method"] or "",
        "" if event["lam"] is None else f"{event['lam']:g}",
        event["verdict"] or "",
        "" if event["seconds"] is None else f"{event['seconds']:.1f}",
        text,
    ]


def _ids(ids: list[int] | None) -> str:
    """Request ids as a cell: ``2,4,7``, or ``2…21 (10)`` for more than four."""
    if not ids:
        return ""
    return ",".join(map(str, ids)) if len(ids) <= 4 else f"{ids[0]}…{ids[-1]} ({len(ids)})"


def format_history(history: list[dict[str, Any]], width: int = 40) -> str:
    """The history (:meth:`RequestLedger.history <pyro_unlearn.ledger.RequestLedger.history>`)
    as a fixed-width text table, one line per event; ``rows`` is new/named keys of a request,
    ``requests`` the ids a serve or retraining covers; the last column is cut at ``width``.

    Example:
        >>> event = dict(id=2, time="2024-05-01T10:00:00.000000+00:00", kind="request",
        ...              status="pending", keys=[3, 4], new_keys=[4], covers=None, method=None,
        ...              lam=None, verdict=None, seconds=None, reason="user left", summary=None)
        >>> print(format_history([event]).splitlines()[-1])  # doctest: +NORMALIZE_WHITESPACE
        2 2024-05-01 10:00:00 request pending 1/2 user left
    """
    widths = [w for _, w in COLUMNS[:-1]] + [width]
    lines = [" ".join(h.ljust(w) for (h, _), w in zip(COLUMNS, widths, strict=True)).rstrip()]
    for event in history:
        cells = _cells(event)
        cells[-1] = cells[-1] if len(cells[-1]) <= width else cells[-1][: width - 1] + "…"
        lines.append(" ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``ledger`` subcommand to a parser's subparsers (the ``pyro-unlearn`` command's);
    :func:`run` runs it."""
    parser = subparsers.add_parser(
        "ledger", help="print a deletion-request ledger's history (and export it as JSON)"
    )
    parser.add_argument("path", metavar="PATH", help="the ledger file")
    parser.add_argument("--json", metavar="OUT", help="also write the history as JSON")
    parser.add_argument(
        "--width", type=int, default=40, help="width of the reason/summary column (default 40)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the ledger ``args.path``'s description and history; write ``args.json`` if given.
    Returns 0, or 1 with one line on stderr when the file is missing, not a ledger or damaged.
    """
    try:
        with RequestLedger(args.path) as ledger:
            info, history = ledger.describe(), ledger.history()
            if args.json:
                ledger.export_json(args.json)
    except (OSError, LedgerError) as error:
        print(f"pyro-unlearn ledger: error: {error}", file=sys.stderr)
        return 1
    print(
        f"{info['path']}: {info['policy']} ledger of {info['num_rows']} rows"
        f"{' (' + info['name'] + ')' if info['name'] else ''}; {info['erased_rows']} erased, "
        f"{info['kept_rows']} kept, pending requests {info['pending'] or 'none'}; current "
        f"posterior {info['current']}, q(θ|D) {info['original']}"
    )
    print(format_history(history, args.width))
    if args.json:
        print(f"history: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``pyro-unlearn ledger PATH [--json OUT] [--width N]``, on its own.

    Arguments:
        argv: the arguments after ``ledger``; ``None`` for ``sys.argv[1:]``.

    Returns:
        The exit status: 0, 1 (no such ledger, or a damaged one) or 2 (a usage error).

    Example::

        main(["model.ledger", "--json", "audit.json"])
    """
    parser = argparse.ArgumentParser(prog="pyro-unlearn")
    add_subcommand(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["ledger", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
