import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_legacy_st

from hexpress._device import place_model
from hexpress.errors import ConfigError, OutputExistsError
from hexpress.models import load_checkpoint
from hexpress.train import load_config, load_training_state, train

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "tiny_smoke.yaml"
QUIET = ["run.progress=false", "run.tensorboard=false", "run.device=cpu"]


def _cfg(out, *extra):
    return load_config(
        SMOKE,
        [
            f"run.out_dir={out}",
            "data.train=[S1]",
            "data.val=[S2]",
            "data.genes.n=6",
            *QUIET,
            *extra,
        ],
    )


def test_train_checkpoint_reload_identical_predictions(tmp_path, samples):
    res = train(_cfg(tmp_path / "run", "optim.max_steps=3"), samples=samples)
    assert res.steps == 3 and res.checkpoint.is_file()
    assert res.val["units"]["n_units"] == samples["S2"].n_units
    ck = load_checkpoint(res.checkpoint)
    assert ck.genes == res.genes and ck.model_mpp == 1.0
    assert ck.normalization["scale"] == 1e4 and ck.config["model"]["name"] == "test_pixnet"
    a, b = ck.model.state_dict(), res.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the trained model is in channels-last layout; in the same layout the reloaded one
    # predicts bit for bit the same
    place_model(ck.model, torch.device("cpu"))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), res.model(x), rtol=0, atol=0)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0] == "step,split,loss,mse,pcc,lr,time_s"
    assert [r.split(",")[:2] for r in rows[1:]] == [["1", "train"], ["2", "train"], ["3", "train"],
                                                    ["3", "val"]]  # fmt: skip
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.optim.max_steps == 3 and saved.model.name == "test_pixnet"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3


def test_resume_reaches_the_uninterrupted_weights(tmp_path, samples, monkeypatch):
    extra = ["optim.batch_size=2", "run.ckpt_every=2", "data.val=[]", "optim.schedule=cosine"]
    full = train(_cfg(tmp_path / "full", "optim.max_steps=6", *extra), samples=samples)

    # the same run, killed while fetching the batch of step 5 (state last written at step 4)
    from hexpress.train.data import DenseCropDataset

    original = DenseCropDataset.__getitem__

    def killed(self, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(DenseCropDataset, "__getitem__", killed)
    cfg = _cfg(tmp_path / "half", "optim.max_steps=6", *extra)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, samples=samples)
    monkeypatch.setattr(DenseCropDataset, "__getitem__", original)
    meta, state = load_training_state(tmp_path / "half")
    assert meta["step"] == 4
    with pytest.raises(OutputExistsError, match="--resume"):
        train(cfg, samples=samples)
    with pytest.raises(ConfigError, match="optim.lr"):
        train(_cfg(tmp_path / "half", "optim.max_steps=6", "optim.lr=1e-3", *extra),
              resume=True, samples=samples)  # fmt: skip
    resumed = train(cfg, resume=True, samples=samples)
    assert resumed.start_step == 4 and resumed.steps == 6
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    # the resumed steps really changed the weights: the comparison is not trivial
    assert not torch.equal(state["model.head.weight"], b["head.weight"])
    steps = [r.split(",")[0] for r in (tmp_path / "half" / "log.csv").read_text().splitlines()]
    assert steps[1:] == ["1", "2", "3", "4", "5", "6"]  # no duplicated rows after resuming


def test_patch_model_trains(tmp_path, samples):
    res = train(
        _cfg(tmp_path / "p", "model.name=test_patch", "model.kwargs={patch_um: 24, input_px: 32}",
             "optim.max_steps=3", "optim.batch_size=4"),
        samples=samples,
    )  # fmt: skip
    ck = load_checkpoint(res.checkpoint)
    assert ck.kind == "patch" and ck.model_mpp == pytest.approx(24 / 32)
    assert torch.isfinite(torch.tensor(res.train_loss)) and res.val["units"]["n_units"] > 0


@pytest.mark.parametrize("name", ["test_ridge", "mean_baseline"])
def test_closed_form_baselines_fit(tmp_path, samples, name):
    res = train(
        _cfg(tmp_path / name, f"model.name={name}", "model.kwargs={patch_um: 24, input_px: 32}"),
        samples=samples,
    )
    assert res.steps == 0
    ck = load_checkpoint(res.checkpoint)
    v = res.val["units"]
    assert v["n_units"] == samples["S2"].n_units and v["mse"] < 5
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = ck.model(x)
    assert out.shape == (3, 6) and torch.isfinite(out).all()
    if name == "mean_baseline":
        from hexpress.train import load_training_data

        data = load_training_data(_cfg(tmp_path / "x").data, samples=samples)
        torch.testing.assert_close(out[0], torch.from_numpy(data.target_mean()))
    else:
        assert bool(ck.model.fitted)


def test_several_geometries_train(tmp_path):
    from conftest import synthetic_slide

    _, discs = synthetic_slide(0)
    _, squares = synthetic_slide(0, spot_um=8, pitch_um=10, geometry="square")
    res = train(
        _cfg(
            tmp_path / "g",
            "data.val=[]",
            "data.val_fraction=0.2",
            "data.val_block_um=50",
            "data.geometries=[{name: spots, weight: 1}, {name: bins, weight: 0.5}]",
            "optim.max_steps=2",
        ),
        samples={"S1": [discs, squares]},
    )
    assert set(res.val) == {"spots", "bins"}
    assert res.val["bins"]["n_units"] > res.val["spots"]["n_units"] > 0


def _free_port() -> int:
    """A port no other run holds now (a fixed one collides when two suites run at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    root = write_legacy_st(tmp_path / "st")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "hexpress.cli", "train", str(SMOKE),
           f"data.root={root}", "data.train=[S1,S2]", "run.progress=false", "run.threads=1",
           "--max-steps", "3", "--out", str(out)]  # fmt: skip
    r = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(out / "model.json")
    assert ck.meta["extra"]["step"] == 3 and len(ck.genes) == 6
    assert r.stdout.count("Run folder:") == 1  # only rank 0 reports and writes


def test_loader_workers_do_not_change_the_run(tmp_path, samples):
    a = train(_cfg(tmp_path / "w0", "optim.max_steps=2", "data.val=[]"), samples=samples)
    b = train(
        _cfg(tmp_path / "w1", "optim.max_steps=2", "data.val=[]", "run.num_workers=1"),
        samples=samples,
    )
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.realdata
@pytest.mark.slow
def test_her2st_recipe_reads_and_fits_the_mean(tmp_path, her2st_dir):
    cfg = load_config(
        REPO / "configs" / "mean_her2st.yaml",
        [
            f"data.root={her2st_dir}",
            f"data.split_file={REPO / 'configs' / 'splits' / 'her2st_patients.yaml'}",
            f"run.out_dir={tmp_path / 'mean'}",
            "data.genes.n=50",
            *QUIET,
        ],
    )
    res = train(cfg)
    meta = load_checkpoint(res.checkpoint).meta
    assert meta["extra"]["train_samples"] == ["C2", "C3", "C4", "C5", "C6"]  # never A1
    assert len(res.genes) == 50 and res.val["spots"]["n_units"] > 0


def _val_pccs(run: Path) -> dict[int, float]:
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
    return {int(r[0]): float(r[4]) for r in rows if r[1] == "val"}


def test_select_best_val_keeps_the_weights_of_the_best_validation(tmp_path, samples):
    extra = ["optim.max_steps=8", "run.val_every=2", "optim.lr=5e-2", "optim.batch_size=2"]
    best = train(_cfg(tmp_path / "best", *extra, "run.select=best_val"), samples=samples)
    last = train(_cfg(tmp_path / "last", *extra), samples=samples)
    pccs = _val_pccs(tmp_path / "best")
    assert pccs == _val_pccs(tmp_path / "last") and len(pccs) == 4  # the same run, kept apart
    step = max(pccs, key=pccs.get)
    ck = load_checkpoint(best.checkpoint)
    assert ck.meta["extra"]["step"] == step
    assert load_checkpoint(last.checkpoint).meta["extra"]["step"] == 8
    saved = load_checkpoint(tmp_path / "best" / "best")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), saved.model(x), rtol=0, atol=0)
        if step != 8:  # the kept weights are not the last ones
            assert not torch.allclose(ck.model(x), load_checkpoint(last.checkpoint).model(x))


def test_select_must_be_known(tmp_path):
    with pytest.raises(ConfigError, match="run.select"):
        _cfg(tmp_path / "r", "run.select=best")


def test_select_best_val_survives_a_resume(tmp_path, samples):
    extra = ["run.val_every=2", "run.ckpt_every=2", "optim.lr=5e-2", "optim.batch_size=2",
             "run.select=best_val"]  # fmt: skip
    train(_cfg(tmp_path / "r", "optim.max_steps=8", *extra), samples=samples)
    first = _val_pccs(tmp_path / "r")
    res = train(_cfg(tmp_path / "r", "optim.max_steps=12", *extra), samples=samples, resume=True)
    pccs = _val_pccs(tmp_path / "r")
    assert set(first) < set(pccs) and max(pccs) == 12
    step = max(pccs, key=pccs.get)
    assert load_checkpoint(res.checkpoint).meta["extra"]["step"] == step
