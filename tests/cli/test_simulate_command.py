"""hexpress simulate and hexpress info on what it writes."""

import json

from typer.testing import CliRunner

from hexpress.cli import app


def test_simulate_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "sim"
    runner = CliRunner()
    args = ["simulate", "--out", str(out), "--size-mm", "0.3", "--seed", "2", "--json"]
    res = runner.invoke(app, [*args, "--formats", "visium,truth"])
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.output.strip().splitlines()[-1])
    assert set(manifest["formats"]) == {"visium", "truth"}
    assert (out / "visium" / "outs" / "filtered_feature_bc_matrix.h5").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code != 0
    assert "not empty" in str(again.exception)
    res = runner.invoke(
        app,
        ["simulate", "--out", str(out), "--size-mm", "0.3", "--formats", "truth", "--overwrite"],
    )
    assert res.exit_code == 0, res.output
    assert "truth" in res.output and "cells" in res.output


def test_info_reads_every_written_format(small_slide, small_out):
    out, _ = small_out
    runner = CliRunner()
    cases = [
        ["legacy_st", "-f", "legacy-st"],
        ["visium/outs", "-f", "visium", "--image", str(out / "visium" / "image.tif")],
        ["visium_hd", "-f", "visium-hd", "--bin-um", "8", "--image", str(out / "visium_hd/image.tif")],
        [
            "xenium", "-f", "xenium", "--image", str(out / "xenium/synthetic_he_image.ome.tif"),
            "--alignment", str(out / "xenium/synthetic_he_imagealignment.csv"),
        ],
    ]  # fmt: skip
    for rel, *opts in cases:
        res = runner.invoke(app, ["info", str(out / rel), *opts, "--json"])
        assert res.exit_code == 0, (rel, res.output, res.exception)
        summary = json.loads(res.output.strip().splitlines()[-1])
        assert summary["n_genes"] == 300
        assert summary["mpp"] == 0.5
