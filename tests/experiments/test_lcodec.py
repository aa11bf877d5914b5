"""The L-CODEC experiment (pyro_unlearn/experiments/lcodec.py): the acceptance comparison on
digits in its quick setting, the Fashion-MNIST loader and its clean skip."""

import gzip
import json
import math

import numpy as np
import pytest
import torch

from pyro_unlearn.experiments import lcodec as experiment


@pytest.fixture(scope="module")
def results():
    # The MLP on digits with 8 mislabelled training samples removed one by one (seed 0).
    return experiment.run(
        datasets=("digits",),
        models=("mlp",),
        scenarios=("mislabelled",),
        methods=("foci", "random"),
        quick=True,
        progress=False,
    )


def test_foci_forgets_more_than_a_random_block_of_the_same_size(results):
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"original", "foci", "random", "retrained"}
    foci, random, original = rows["foci"], rows["random"], rows["original"]
    # the acceptance comparison: lower accuracy on the removed samples (on their given, wrong
    # labels; retraining gets 0), at equal or better validation accuracy
    assert foci["acc_removed"] < random["acc_removed"], (foci, random)
    assert foci["acc_validation"] >= random["acc_validation"]
    # and the loss of the removed samples rises more, towards the retrained model's
    assert original["loss_removed"] < random["loss_removed"] < foci["loss_removed"]
    assert foci["loss_removed"] < rows["retrained"]["loss_removed"]
    # the same number of slices, picked at random
    assert foci["slices"] == random["slices"] and foci["skipped"] == random["skipped"] == 0


def test_results_are_json_and_plot(results):
    json.dumps(results, allow_nan=False)
    assert results["settings"]["num_removals"] == experiment.QUICK["num_removals"]
    for row in results["rows"]:  # membership inference: removed against validation samples
        assert math.isfinite(row["mia_accuracy"]) and math.isfinite(row["mia_auc"])
    fig = experiment.plot(results)
    assert len(fig.axes) == 6  # one group (digits, mlp, mislabelled) × 6 panels
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_fashion_mnist_is_skipped_with_the_package_name(tmp_path):
    out = experiment.run(datasets=("fashion_mnist",), fashion_dir=tmp_path, progress=False)
    assert out["rows"] == []
    assert "dataset-fashion-mnist" in out["skipped"]["fashion_mnist"]
    with pytest.raises(FileNotFoundError, match="install the Debian package dataset-fashion"):
        experiment.fashion_mnist(tmp_path)


def _write_idx(path, array, header):
    with gzip.open(path, "wb") as f:
        f.write(bytes(header) + array.astype(np.uint8).tobytes())


def test_fashion_mnist_loader_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (30, 28, 28)),
        "t10k": rng.integers(0, 256, (12, 28, 28)),
    }
    labels = {"train": rng.integers(0, 10, 30), "t10k": rng.integers(0, 10, 12)}
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[split], [0] * 16)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels[split], [0] * 8)
    data = experiment.fashion_mnist(tmp_path)
    assert data.x.shape == (30, 784) and data.x_val.shape == (12, 784)
    expected = torch.as_tensor(images["train"].reshape(30, -1) / 255.0)
    torch.testing.assert_close(data.x, expected)
    assert data.y.tolist() == labels["train"].tolist()
    subset = experiment.fashion_mnist(tmp_path, num_train=10, num_validation=5)
    assert subset.x.shape == (10, 784) and subset.y_val.shape == (5,)


def test_bad_options():
    with pytest.raises(ValueError, match="'random' takes its sizes from 'foci'"):
        experiment.run(datasets=("digits",), models=("logreg",), methods=("random",), quick=True)
    with pytest.raises(ValueError, match="datasets must be among"):
        experiment.run(datasets=("mnist",))
    with pytest.raises(ValueError, match="model must be 'logreg' or 'mlp'"):
        experiment.make_model("cnn", 4, 2)
