"""The Fashion-MNIST reproduction (pyro_unlearn/experiments/fashion_mnist) in its quick mode,
on the subset of Fashion-MNIST shipped with the package: the paper's qualitative finding at
λ = 0 and at a moderate λ, the rows' keys, the figures and the data's errors."""

import argparse
import inspect
import json
import math

import pytest
import torch

import pyro_unlearn as pu
from pyro_unlearn.experiments import fashion_mnist as experiment

KEYS = {
    "guide", "method", "lam", "kl_erased_mean", "kl_erased_std", "kl_remaining_mean",
    "kl_remaining_std", "seconds", "acc_test", "mia_accuracy", "mia_auc", "verdict", "pareto_k",
}  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("fashion")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 650-weight layer: one thread is faster on a busy machine
    try:
        args = argparse.Namespace(
            quick=True, out=str(out), seed=0, device="cpu", no_progress=True, fashion_dir=None
        )
        return experiment.reproduce(args), out
    finally:
        torch.set_num_threads(threads)


def _rows(results):
    return {(r["method"], r["lam"]): r for r in results["rows"]}


def test_rows_and_figures(quick):
    results, out = quick
    json.dumps(results, allow_nan=False)
    rows = _rows(results)
    assert set(rows) == {("full", 1.0)} | {(m, lam) for m in ("eubo", "rkl") for lam in (1e-3, 0)}
    for row in rows.values():
        assert KEYS <= set(row), KEYS - set(row)
        assert math.isfinite(row["kl_erased_mean"]) and math.isfinite(row["kl_remaining_mean"])
        assert 0.0 <= row["mia_auc"] <= 1.0
    for (method, _), row in rows.items():
        assert (row["verdict"] is None) == (method == "full")
    assert (out / "fashion_mnist_kl.png").is_file()
    assert (out / "fashion_mnist_probabilities.png").is_file()
    probs = results["class_probabilities"]
    assert len(probs["labels"]) == 4
    for name in ("full", "retrained", "eubo λ=0", "rkl λ=0"):
        assert torch.allclose(torch.tensor(probs[name]).sum(-1), torch.ones(4), atol=1e-4)


def test_the_papers_finding(quick):
    results, _ = quick
    rows = _rows(results)
    full = rows[("full", 1.0)]
    assert full["acc_test"] > 0.5  # ten classes: chance is 0.1
    assert results["network"]["acc_test"] > 0.5
    # a moderate λ keeps none of q(θ|D)'s mass in 170 dimensions: unlearning is switched off
    for method in ("eubo", "rkl"):
        row = rows[(method, 1e-3)]
        assert abs(row["kl_erased_mean"] - full["kl_erased_mean"]) < 0.05, row
        assert abs(row["acc_test"] - full["acc_test"]) < 0.1, row
    # at λ = 0 the EUBO unlearns catastrophically, the reverse KL does not
    eubo, rkl = rows[("eubo", 0.0)], rows[("rkl", 0.0)]
    assert eubo["kl_erased_mean"] > 1.0 > rkl["kl_erased_mean"], (eubo, rkl)
    assert rkl["kl_erased_mean"] < full["kl_erased_mean"] + 0.2
    assert rkl["acc_test"] > full["acc_test"] - 0.1 > eubo["acc_test"]
    assert eubo["verdict"] == "retrain"


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        experiment.run(tmp_path, quick=True)


def test_bad_num_erased(tmp_path):
    with pytest.raises(ValueError, match="num_erased must be in"):
        experiment.run(num_erased=5000, quick=True, progress=False)


def test_cli_names_missing_fashion_files_before_running(tmp_path, capsys):
    from pyro_unlearn.experiments.cli import main

    assert main(["reproduce", "fashion-mnist", "--fashion-dir", str(tmp_path)]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_paper_preset_is_the_papers_scale():
    # the committed notebook's run: every key a parameter of run(), all 60 000 training and
    # 10 000 test images, 10 000 erased, the paper's λ grid
    assert set(experiment.PAPER) <= set(inspect.signature(experiment.run).parameters)
    paper = experiment.PAPER
    assert paper["num_train"] is None and paper["num_test"] is None
    assert paper["num_erased"] == 10000
    assert tuple(paper["lambdas"]) == pu.LAMBDAS
