"""RequestLedger in one process: requests, refusals, damaged files, retraining, the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.ledger import CorruptLedgerError, LedgerError, RequestLedger
from pyro_unlearn.ledger import serve as serve_module
from pyro_unlearn.ledger.cli import main

from .conjugate import NUM_ROWS, data, exact_guide, model

FAST = dict(method="eubo", num_steps=60, lr=0.05, num_particles=16, progress=False)


@pytest.fixture
def y():
    return data()


@pytest.fixture
def guide(y):
    return exact_guide(y)


@pytest.fixture
def make(tmp_path, guide, y):
    def make(policy="lazy", keys=range(NUM_ROWS), name="ledger.db"):
        return RequestLedger.create(
            tmp_path / name, pu.freeze(guide, y), keys, policy=policy, plate="data"
        )

    return make


def _state(ledger):
    return [e for e in ledger.history()], ledger.pending(), ledger.erased()


def _raw(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_requests_are_recorded_and_idempotent(make):
    ledger = make(keys=["a", 1, "1", 2, 3])
    first = ledger.request(["a", 1, 1], reason="user a left")
    second = ledger.request([1, "1"])  # 1 again: only "1" is new
    third = ledger.request(1)  # only keys already erased: recorded, changes nothing
    assert ledger.erased() == ["a", 1, "1"]
    assert ledger.pending() == [first, second]
    events = {e["id"]: e for e in ledger.history()}
    assert events[first]["keys"] == ["a", 1] and events[first]["reason"] == "user a left"
    assert events[second]["new_keys"] == ["1"]
    assert events[third]["new_keys"] == [] and events[third]["status"] == "already erased"
    assert ledger.is_erased("1") and not ledger.is_erased(2)


def test_unknown_keys_and_bad_input_write_nothing(make):
    ledger = make()
    ledger.request([3])
    before = _state(ledger)
    with pytest.raises(ValueError, match=r"no row with the key\(s\) 40, \"x\""):
        ledger.request([4, 40, "x"])
    with pytest.raises(TypeError, match="integer or a string"):
        ledger.request([4, 2.5])
    with pytest.raises(TypeError, match="not a bool"):
        ledger.request([True])
    with pytest.raises(ValueError, match="empty"):
        ledger.request([])
    with pytest.raises(TypeError, match="reason"):
        ledger.request([4], reason=7)
    assert _state(ledger) == before
    assert not ledger.is_erased(4)


def test_create_refuses_bad_arguments(tmp_path, guide, y, make):
    posterior = pu.freeze(guide, y)
    make()
    with pytest.raises(FileExistsError):
        make()
    with pytest.raises(ValueError, match="policy"):
        RequestLedger.create(tmp_path / "b.db", posterior, range(3), policy="eager")
    with pytest.raises(ValueError, match="unique"):
        RequestLedger.create(tmp_path / "b.db", posterior, [1, 2, 1])
    with pytest.raises(TypeError, match="FrozenPosterior"):
        RequestLedger.create(tmp_path / "b.db", guide, range(3))
    assert not (tmp_path / "b.db").exists()


def test_files_that_are_not_ledgers(tmp_path):
    with pytest.raises(FileNotFoundError):
        RequestLedger(tmp_path / "missing.db")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(LedgerError, match="not a request ledger"):
        RequestLedger(text)
    other = tmp_path / "other.db"
    _raw(other, "CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="application_id"):
        RequestLedger(other)


def test_flipped_bytes_in_the_posterior_are_caught(make, guide, y):
    ledger = make()
    path = ledger.path
    ledger.close()  # checkpoints the write-ahead log into the file
    (blob,) = _raw(path, "SELECT state FROM posteriors WHERE id = 1")[0]
    raw = bytearray(path.read_bytes())
    where = raw.find(blob)
    assert where > 0 and raw.find(blob, where + 1) == -1
    middle = where + len(blob) // 2
    raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])
    path.write_bytes(raw)
    with pytest.raises(CorruptLedgerError, match="posterior 1 is corrupted: its SHA-256"):
        RequestLedger(path).current(guide, y)


@pytest.mark.parametrize("cut", [0.5, 0.9, 100])
def test_truncated_or_damaged_files_are_refused(make, guide, y, cut):
    ledger = make()
    ledger.request(list(range(10)))
    path = ledger.path
    ledger.close()
    raw = path.read_bytes()
    assert len(raw) > 3 * 4096
    path.write_bytes(raw[: cut if isinstance(cut, int) else int(len(raw) * cut)])
    with pytest.raises(LedgerError):
        RequestLedger(path).current(guide, y)


def test_damaged_page_is_refused(make, guide, y):
    ledger = make()
    path = ledger.path
    ledger.close()
    raw = bytearray(path.read_bytes())
    raw[4096 : 4096 + 64] = b"\xa5" * 64  # the header of the second b-tree page
    path.write_bytes(raw)
    with pytest.raises(CorruptLedgerError, match="damaged"):
        RequestLedger(path).current(guide, y)


def test_lazy_keeps_rows_until_a_retraining_purges_them(make, guide, y):
    ledger = make()
    ledger.request([0, 1, 2])
    record = ledger.serve(model, guide, y, diagnose=False, **FAST)
    assert record.status == "served" and record.installed and record.rows == 3
    assert ledger.kept_rows() == 3 and ledger.pending() == []
    assert ledger.serve(model, guide, y, **FAST) is None  # nothing pending
    (kept,) = _raw(ledger.path, "SELECT data FROM kept")[0]
    assert bytes(kept) in ledger.path.read_bytes() + _wal(ledger.path)
    ledger.request([3])
    retrained = pu.freeze(exact_guide(y[4:]), y)
    event = ledger.record_retraining(retrained, note="weekly retraining")
    assert ledger.kept_rows() == 0 and ledger.pending() == []
    assert ledger.history()[-1]["covers"] == [4] and ledger.history()[-1]["id"] == event
    assert bytes(kept) not in ledger.path.read_bytes() + _wal(ledger.path)  # overwritten
    state = ledger.current_state()["params"]
    for name, value in retrained.state_dict()["params"].items():
        assert torch.equal(state[name], value)


def _wal(path):
    wal = path.with_name(path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_chained_keeps_no_rows(make, guide, y):
    ledger = make("chained")
    ledger.request([0, 1])
    ledger.serve(model, guide, y, diagnose=False, **FAST)
    assert ledger.kept_rows() == 0 and _raw(ledger.path, "SELECT COUNT(*) FROM kept") == [(0,)]


def test_retrain_verdict_is_recorded_not_installed(make, guide, y, monkeypatch):
    ledger = make()
    request = ledger.request([0, 1, 2, 3])
    before = ledger.current_state()["params"]
    real = serve_module.forget

    def distrusted(*args, **kwargs):
        result = real(*args, **kwargs)
        result.verdict = "retrain"
        return result

    monkeypatch.setattr(serve_module, "forget", distrusted)
    record = ledger.serve(model, guide, y, **FAST)
    assert record.status == "retrain advised" and not record.installed
    assert ledger.pending() == [request]
    after = ledger.current_state()["params"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    event = ledger.history()[-1]
    assert event["status"] == "retrain advised" and event["summary"].startswith("retrain advised")
    monkeypatch.setattr(serve_module, "forget", real)
    record = ledger.serve(model, guide, y, diagnose=False, **FAST)
    assert record.installed and ledger.pending() == []


def test_cli_prints_and_exports_the_history(make, guide, y, tmp_path, capsys):
    ledger = make()
    ledger.request([5, 6], reason="user left")
    ledger.serve(model, guide, y, **FAST)
    out = tmp_path / "audit.json"
    assert main([str(ledger.path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "user left" in printed and "eubo" in printed and "2 erased" in printed
    exported = json.loads(out.read_text())
    assert [e["kind"] for e in exported["history"]] == ["create", "request", "serve"]
    assert exported["ledger"]["policy"] == "lazy" and exported["ledger"]["kept_rows"] == 2
    assert main([str(tmp_path / "missing.db")]) == 1
    assert "no ledger file" in capsys.readouterr().err


def test_pyro_unlearn_ledger_subcommand(make, guide, y, tmp_path, capsys):
    from pyro_unlearn.experiments.cli import main as pyro_unlearn

    ledger = make()
    ledger.request([0, 1], reason="gdpr")
    out = tmp_path / "history.json"
    assert pyro_unlearn(["ledger", str(ledger.path), "--json", str(out)]) == 0
    assert "gdpr" in capsys.readouterr().out and out.exists()
    assert pyro_unlearn(["ledger", str(tmp_path / "missing.db")]) == 1


def test_serve_with_forgets_default_method_records_the_run_kept(make, guide, y):
    ledger = make()
    ledger.request([3, 4, 5], reason="default method")
    record = ledger.serve(model, guide, y, progress=False)  # method="auto"
    assert record.method == record.result.method == "rkl"  # auto's first run, trusted here
    assert record.result.solver == "natural" and record.result.attempts[0]["chosen"]
    assert record.verdict == record.result.verdict and record.verdict in ("trusted", "approximate")
    assert record.status == "served" and record.installed
    serve = [event for event in ledger.history() if event["kind"] == "serve"][-1]
    assert serve["method"] == "rkl"
