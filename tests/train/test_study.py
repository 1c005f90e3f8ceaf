"""Ablation studies: the PRESTIGE-ST config expands to the right runs; a tiny study trains, scores
on validation blocks only and chooses from them."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_legacy_st

from hexpress.errors import ConfigError
from hexpress.models.encoders import encoder_weights_available, list_encoders
from hexpress.train import load_config
from hexpress.train.study import expand_study, load_study, run_study

REPO = Path(__file__).resolve().parents[2]
PRESTIGE = REPO / "configs" / "study_prestige_her2st.yaml"


def test_prestige_config_expands_to_its_design_and_skips_what_is_missing():
    runs = expand_study(load_study(PRESTIGE))
    # folds x (patch: size x encoder, size x training, + stain; PixNet: base + one level of
    # each axis at a time: 2 resolutions, 1 encoder, frozen, stain)
    assert len(runs) == 2 * ((3 * 2 + 3 + 1) + (1 + 2 + 1 + 1 + 1))
    assert len({(r.fold, r.family, r.setting) for r in runs}) == len(runs)
    assert len({r.out_dir for r in runs}) == len(runs)
    lite2_here = encoder_weights_available("tf_efficientnet_lite2")
    for r in runs:
        lite2 = r.levels["encoder"] == "lite2"
        stain = r.levels["stain"] == "on"
        # this install has every option of the grid; only Lite2's weights may be missing
        assert bool(r.skipped) == (lite2 and not lite2_here), r.skipped
        if r.skipped:
            continue
        cfg = load_config(r.recipe, r.overrides)
        # choices are made on validation blocks of the training sections, never on test ones
        assert cfg.data.val_fraction > 0 and cfg.data.split == r.fold
        assert Path(cfg.run.out_dir) == r.out_dir
        phases = [next(iter(p)) for p in cfg.optim.phases]
        if r.family == "patch baseline":
            assert cfg.model.kwargs["patch_um"] == float(r.levels["patch_um"])
            assert cfg.model.name == f"{r.levels['encoder']}_patch"
        else:
            assert cfg.data.model_mpp == float(r.levels["model_mpp"])
            assert cfg.model.kwargs["encoder"] in list_encoders()
            assert cfg.model.kwargs["encoder"].endswith(r.levels["encoder"])
            assert not phases or phases[-1] == "finetune"  # frozen runs end end to end
        assert ("frozen" in phases) == (r.levels["training"] == "frozen")
        off_base = [a for a, v in r.levels.items() if v != _base(r.family)[a]]
        crossed = {"patch_um", "encoder"}, {"patch_um", "training"}
        if r.family == "PixNet" or not any(set(off_base) <= g for g in crossed):
            assert len(off_base) <= 1, r.setting  # every other axis at its base
        assert cfg.data.stain.method == ("macenko" if stain else "none")
    # in this install at least the Lite0 rows of both families run, on both folds
    ok = [r for r in runs if not r.skipped]
    assert {(r.family, r.fold) for r in ok} == {
        (f, k) for f in ("patch baseline", "PixNet") for k in ("test_A", "test_C")
    }


def _base(family):
    doc = load_study(PRESTIGE)
    fam = next(f for f in doc["families"] if f["name"] == family)
    return {a: next(iter(levels)) for a, levels in fam["axes"].items()}


def _design_study(tmp_path, cross=None):
    fam = {"name": "f", "recipe": "tiny.yaml",
           "axes": {a: {f"{a}{i}": [] for i in range(n)} for a, n in (("x", 3), ("y", 2),
                                                                    ("z", 2), ("w", 3))}}  # fmt: skip
    if cross is not None:
        fam["cross"] = cross
    (tmp_path / "tiny.yaml").write_text((REPO / "configs" / "tiny_smoke.yaml").read_text())
    doc = {"folds": [{"name": "a"}, {"name": "b"}], "families": [fam]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return expand_study(load_study(tmp_path / "s.yaml"))


def test_cross_crosses_its_axes_and_varies_the_others_one_at_a_time(tmp_path):
    def settings(runs):
        got = [tuple(r.levels.values()) for r in runs if r.fold == "a"]
        assert len(set(got)) == len(got)  # no setting twice
        assert [tuple(r.levels.values()) for r in runs if r.fold == "b"] == got
        return set(got)

    base = ("x0", "y0", "z0", "w0")
    grid = settings(_design_study(tmp_path))
    assert len(grid) == 3 * 2 * 2 * 3 and base in grid
    crossed = settings(_design_study(tmp_path, cross=["x", "z"]))
    # x by z with y and w at base, then y1, w1 and w2 alone
    want = {(x, "y0", z, "w0") for x in ("x0", "x1", "x2") for z in ("z0", "z1")}
    want |= {("x0", "y1", "z0", "w0"), ("x0", "y0", "z0", "w1"), ("x0", "y0", "z0", "w2")}
    assert crossed == want
    one_at_a_time = settings(_design_study(tmp_path, cross=[]))
    assert one_at_a_time == {base} | {
        tuple(v if i == k else base[i] for i in range(4))
        for k, v in ((0, "x1"), (0, "x2"), (1, "y1"), (2, "z1"), (3, "w1"), (3, "w2"))
    }
    # two crossed groups: their union, each setting once, then z alone
    groups = settings(_design_study(tmp_path, cross=[["x", "y"], ["x", "w"]]))
    want = {(x, y, "z0", "w0") for x in ("x0", "x1", "x2") for y in ("y0", "y1")}
    want |= {(x, "y0", "z0", w) for x in ("x0", "x1", "x2") for w in ("w0", "w1", "w2")}
    assert groups == want | {("x0", "y0", "z1", "w0")}
    for bad in (["x", "v"], [["x", "y"], "z"], "x", [["x"], [1]]):
        with pytest.raises(ConfigError, match="cross must be a list of its axes"):
            _design_study(tmp_path, cross=bad)


@pytest.mark.parametrize(
    "levels, match",
    [({}, "axis 'x': no levels"), (["a", "b"], "axis 'x': levels must be a mapping")],
)
def test_an_axis_without_levels_is_refused(tmp_path, levels, match):
    doc = {"folds": [{"name": "a"}],
           "families": [{"name": "f", "recipe": "r.yaml", "axes": {"x": levels}}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=match):
        expand_study(load_study(tmp_path / "s.yaml"))


def test_an_unknown_family_key_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "folds: [{name: a}]\nfamilies: [{name: f, recipe: r.yaml, crosss: []}]\n"
    )
    with pytest.raises(ConfigError, match="unknown key.*crosss"):
        expand_study(load_study(tmp_path / "s.yaml"))


def test_dry_run_trains_nothing(tmp_path):
    doc = yaml.safe_load(PRESTIGE.read_text())
    doc["out_dir"] = str(tmp_path / "study")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "effnet_patch_her2st.yaml").write_text(
        (REPO / "configs" / "effnet_patch_her2st.yaml").read_text()
    )
    (tmp_path / "pixnet_her2st.yaml").write_text(
        (REPO / "configs" / "pixnet_her2st.yaml").read_text()
    )
    out = run_study(cfg, dry_run=True)
    assert len(out["runs"]) == 32 and not (tmp_path / "study").exists()
    # a level naming an encoder this install lacks is skipped, saying so
    doc["families"][1]["axes"]["encoder"]["lite9"] = ["model.kwargs.encoder=no_such_encoder"]
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    runs = run_study(cfg, dry_run=True)["runs"]
    lite9 = [r for r in runs if "encoder=lite9" in r["setting"]]
    assert len(runs) == 32 + 2 and len(lite9) == 2  # PixNet varies one axis at a time
    assert all("'no_such_encoder' is not registered" in r["skipped"] for r in lite9)


@pytest.mark.slow
def test_tiny_study_scores_on_validation_and_chooses_from_it(tmp_path):
    write_legacy_st(tmp_path / "data")
    recipe = yaml.safe_load((REPO / "configs" / "tiny_smoke.yaml").read_text())
    recipe["data"].update(root=str(tmp_path / "data"), train=["S1", "S2"], val_fraction=0.3,
                          val_block_um=60)  # fmt: skip
    recipe["run"].update(progress=False, device="cpu")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    study = {
        "out_dir": str(tmp_path / "study"),
        "overrides": ["optim.max_steps=2", "run.feature_cache=" + str(tmp_path / "cache")],
        "folds": [{"name": "all", "overrides": []}],
        "families": [
            {
                "name": "tiny",
                "recipe": "tiny.yaml",
                "axes": {
                    "training": {
                        "end_to_end": [],
                        "frozen": ["optim.phases=[{frozen: 2}]"],
                    },
                    "stain": {"off": [], "on": ["data.no_such_option=1"]},
                },
            }
        ],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    out = run_study(tmp_path / "study.yaml")
    table = {r["setting"]: r for r in out["table"]}
    assert set(table) == {f"training={t}, stain={s}" for t in ("end_to_end", "frozen")
                          for s in ("off", "on")}  # fmt: skip
    assert "data.no_such_option" in table["training=frozen, stain=on"]["skipped"]
    scored = {k: r["val_pcc_mean"] for k, r in table.items() if r["val_pcc_mean"] is not None}
    assert len(scored) == 2
    for k in scored:  # the score is the run's validation PCC (held-out blocks of S1, S2)
        run = next(r for r in out["runs"] if r["setting"] == k)
        val = json.loads((Path(run["out_dir"]) / "summary.json").read_text())["val"]
        assert scored[k] == pytest.approx(val["units"]["pcc"])
        wall = json.loads((Path(run["out_dir"]) / "summary.json").read_text())["wall_s"]
        assert table[k]["train_s_all"] == round(wall)
        assert val["units"]["n_units"] > 0
    best = max(scored, key=scored.get)
    assert out["chosen"]["tiny"]["setting"] == best
    assert json.loads((tmp_path / "study" / "chosen.json").read_text())["tiny"]["setting"] == best
    assert "val_pcc_all" in (tmp_path / "study" / "study.md").read_text()
    # a second call reuses the finished runs
    assert not any(r["finished"] for r in out["runs"])
    again = run_study(tmp_path / "study.yaml")
    assert again["chosen"] == out["chosen"]
    assert [r["finished"] for r in again["runs"]] == [not r["skipped"] for r in again["runs"]]
    from typer.testing import CliRunner

    from hexpress.cli import app

    res = CliRunner().invoke(app, ["study", str(tmp_path / "study.yaml"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "4 run(s): 0 to train, 2 finished before (reused), 2 skipped" in res.output


def test_a_study_without_families_is_refused(tmp_path):
    (tmp_path / "s.yaml").write_text("folds: [{name: a}]\nfamilies: []\n")
    with pytest.raises(ConfigError, match="families"):
        load_study(tmp_path / "s.yaml")
