"""RequestLedger across real processes: reopening, kill -9 mid-serve, concurrent writers."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyro
import pytest

import pyro_unlearn as pu
from pyro_unlearn.ledger import RequestLedger

from .conjugate import NUM_ROWS, data, exact_guide, model

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = dict(method="rkl", num_steps=60, lr=0.05, num_particles=32, progress=False)

PRELUDE = """
import hashlib, os, sys, time
from pathlib import Path
import pyro, torch
torch.set_num_threads(1)
pyro.enable_validation(True)  # as the tests run
from pyro_unlearn.ledger import RequestLedger
from pyro_unlearn.ledger import serve as serve_module
from tests.ledger.conjugate import data, exact_guide, model
OPTIONS = dict(method="rkl", num_steps=60, lr=0.05, num_particles=32, progress=False)

def digest(state):
    h = hashlib.sha256()
    for name in sorted(state["params"]):
        h.update(name.encode() + state["params"][name].numpy().tobytes())
    return h.hexdigest()
"""


def _python(script: str, *args: str, wait: bool = True):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", PRELUDE + textwrap.dedent(script), *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def _digest(state) -> str:
    h = hashlib.sha256()
    for name in sorted(state["params"]):
        h.update(name.encode() + state["params"][name].numpy().tobytes())
    return h.hexdigest()


def _wait_for(path: Path, process, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"the child exited ({process.returncode}) before {path}"
        assert time.monotonic() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.05)


def _create(path, keys=range(NUM_ROWS)):
    y = data()
    return RequestLedger.create(path, pu.freeze(exact_guide(y), y), keys, plate="data")


@pytest.fixture
def ledger(tmp_path):
    return _create(tmp_path / "ledger.db")


def test_reopened_in_a_fresh_process_serves_the_same_posterior(ledger, tmp_path):
    y = data()
    guide = exact_guide(y)
    ledger.request([0, 1, 2, 3, 4], reason="reopen test")
    ledger.close()
    shutil.copy(ledger.path, tmp_path / "copy.db")
    ledger = RequestLedger(ledger.path)
    pyro.set_rng_seed(3)
    record = ledger.serve(model, guide, y, diagnose=False, **OPTIONS)
    ours = _digest(ledger.current_state())
    assert ours == _digest(record.result.posterior.state_dict())
    ledger.close()
    stored, served = _python(
        """
        y = data()
        print(digest(RequestLedger(sys.argv[1]).current_state()))
        copy, guide = RequestLedger(sys.argv[2]), exact_guide(y)
        pyro.set_rng_seed(3)
        copy.serve(model, guide, y, diagnose=False, **OPTIONS)
        print(digest(copy.current_state()))
        """,
        str(ledger.path),
        str(tmp_path / "copy.db"),
    )
    assert stored == ours  # the bytes the parent installed
    assert served == ours  # the same serve, run in a fresh process from the reopened file


def _snapshot(ledger: RequestLedger):
    return ledger.history(), ledger.pending(), ledger.describe(), _digest(ledger.current_state())


@pytest.mark.parametrize("where", ["forget", "commit"])
def test_kill_9_mid_serve_leaves_the_ledger_as_before(ledger, tmp_path, where):
    ledger.request([0, 1, 2], reason="served before")
    y = data()
    ledger.serve(model, exact_guide(y), y, diagnose=False, **OPTIONS)
    ledger.request([5, 6], reason="to be served when killed")
    before = _snapshot(ledger)
    marker = tmp_path / "inside"
    child = _python(
        """
        path, where, marker = sys.argv[1:]
        y = data()

        def blocked(*args, **kwargs):  # wait inside, to be killed there
            Path(marker).touch()
            time.sleep(300)

        calls = [0]

        def slow_model(y):
            calls[0] += 1
            if calls[0] == 30:
                blocked()
            return model(y)

        if where == "commit":  # after every write of the serve, before COMMIT
            write = serve_module._write_serve
            serve_module._write_serve = lambda *a, **k: (write(*a, **k), blocked())[0]
        RequestLedger(path).serve(
            slow_model if where == "forget" else model, exact_guide(y), y, **OPTIONS
        )
        """,
        str(ledger.path),
        where,
        str(marker),
        wait=False,
    )
    try:
        _wait_for(marker, child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    ledger.close()
    reopened = RequestLedger(ledger.path)  # integrity-checked
    assert _snapshot(reopened) == before
    record = reopened.serve(model, exact_guide(y), y, diagnose=False, **OPTIONS)
    assert record.installed and reopened.pending() == [] and reopened.kept_rows() == 5
    assert isinstance(reopened.current(exact_guide(y), y), pu.FrozenPosterior)


def test_two_concurrent_writers_lose_no_request(tmp_path):
    ledger = _create(tmp_path / "ledger.db", range(100))
    script = """
        path, name, first, go = sys.argv[1:]
        ledger = RequestLedger(path)
        Path(f"{go}.{name}").touch()
        while not Path(go).exists():
            time.sleep(0.01)
        for key in range(int(first), int(first) + 50):
            ledger.request([key], reason=f"{name} {key}")
        """
    go = tmp_path / "go"
    children = [
        _python(script, str(ledger.path), name, first, str(go), wait=False)
        for name, first in (("a", "0"), ("b", "15"))
    ]
    try:
        for name, child in zip("ab", children, strict=True):
            _wait_for(Path(f"{go}.{name}"), child)
        go.touch()
        codes = [child.wait(timeout=240) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert codes == [0, 0]
    requests = [e for e in ledger.history() if e["kind"] == "request"]
    assert sorted(e["reason"] for e in requests) == sorted(
        [f"a {k}" for k in range(50)] + [f"b {k}" for k in range(15, 65)]
    )
    assert ledger.erased() == list(range(65))
    firsts = [k for e in requests for k in e["new_keys"]]
    assert sorted(firsts) == list(range(65))  # each overlapping key erased by exactly one
    assert len(ledger.pending()) == 65
