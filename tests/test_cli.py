import json

from pyro_unlearn.cli import main


def test_demo_quick_writes_table_figure_and_json(tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--quick",
                "--no-progress",
                "--json",
                str(tmp_path / "r.json"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "KL to closed form" in out
    results = json.loads((tmp_path / "r.json").read_text())
    methods = {(r["method"], r["lam"]) for r in results["rows"]}
    assert ("eubo", 0.0) in methods and ("rkl", 0.5) in methods and len(methods) == 13
    assert (tmp_path / "linear_regression.png").stat().st_size > 10_000
    rows = {(r["method"], r["lam"]): r for r in results["rows"] if r["method"] != "full"}
    full = next(r for r in results["rows"] if r["method"] == "full")
    # even a short run moves both methods towards the closed form at λ = 0
    assert rows[("eubo", 0.0)]["kl_target"] < 0.5 * full["kl_target"]
    assert rows[("rkl", 0.0)]["kl_target"] < 0.5 * full["kl_target"]
