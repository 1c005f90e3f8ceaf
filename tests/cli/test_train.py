"""hexpress train: a run from a config and data on disk, refused twice, resumed, bad keys named."""

from cli_helpers import TESTS, helper_module, run

from hexpress.models import load_checkpoint

train_builders = helper_module("train_builders", "train/conftest.py")
SMOKE = TESTS.parent / "configs" / "tiny_smoke.yaml"


def test_train_from_disk_refuses_a_second_run_and_resumes(tmp_path, capsys):
    root = train_builders.write_legacy_st(tmp_path / "st")
    out = tmp_path / "run"
    args = ["train", str(SMOKE), f"data.root={root}", "data.train=[S1]", "data.val=[S2]",
            "run.progress=false", "--max-steps", "2", "--out", str(out)]  # fmt: skip
    code, stdout, stderr = run(args, capsys)
    assert code == 0, stderr
    assert f"Run folder: {out}" in stdout and "validation [units]" in stdout
    assert load_checkpoint(out / "model.json").meta["extra"]["step"] == 2
    code, _, stderr = run(args, capsys)  # a run is there: refuse, say how
    assert code == 1 and "--resume" in stderr
    code, stdout, _ = run([*args, "--resume", "--max-steps", "3"], capsys)
    assert code == 0 and "steps: 3 (started at 2)" in stdout
    code, _, stderr = run([*args[:-4], "optim.bogus=1"], capsys)
    assert code == 1 and "valid keys of optim" in stderr
