from pathlib import Path

import pytest
import yaml

from hexpress.errors import ConfigError, InputFileError
from hexpress.train import TrainConfig, config_to_dict, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_precedence_defaults_yaml_cli(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump({"optim": {"lr": 1e-3, "batch_size": 3}, "data": {"crop_px": 96}})
    )
    assert load_config().optim.lr == TrainConfig().optim.lr == 5e-4  # defaults
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-3 and cfg.optim.batch_size == 3 and cfg.data.crop_px == 96
    assert cfg.optim.weight_decay == 1e-4  # untouched default
    cfg = load_config(path, ["optim.lr=2e-4", "data.train=[C2,C3]", "model.kwargs.mode=density"])
    assert cfg.optim.lr == 2e-4  # the command line wins over YAML
    assert cfg.optim.batch_size == 3  # YAML wins over the default
    assert cfg.data.train == ["C2", "C3"]
    assert cfg.model.kwargs == {"mode": "density"}


def test_override_types_follow_fields():
    cfg = load_config(None, ["data.train=C2", "run.threads=null", "data.genes.names=[A,B]"])
    assert cfg.data.train == ["C2"] and cfg.run.threads is None
    assert cfg.data.genes.names == ["A", "B"]
    cfg = load_config(None, ["data.samples.X.path=/d", "data.samples.X.mpp=0.5"])
    assert cfg.data.samples["X"].path == "/d" and cfg.data.samples["X"].mpp == 0.5
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["optim.max_steps=many"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, ["augment.flips=maybe"])


def test_unknown_keys_are_errors_listing_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrate.*valid keys of optim: lr, weight_decay"):
        load_config(None, ["optim.lrate=1"])
    with pytest.raises(ConfigError, match="valid keys of data.samples.S: path, format"):
        load_config(None, ["data.samples.S.pth=x"])
    path = tmp_path / "r.yaml"
    path.write_text("optim: {lr: 1.0e-3, momentum: 0.9}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml.*optim\.momentum.*valid keys"):
        load_config(path)
    path.write_text("trainer: {}\n")
    with pytest.raises(ConfigError, match="unknown config key.*trainer.*data, model, optim"):
        load_config(path)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(InputFileError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "override, match",
    [
        ("run.device=gpu", "run.device"),
        ("optim.lr=-1", "optim.lr"),
        ("data.crop_px=8", "data.crop_px"),
        ("data.genes.method=random", "data.genes.method"),
        ("model.kwargs.n_genes=3", "n_genes"),
        ("data.val_fraction=1.5", "val_fraction"),
    ],
)
def test_invalid_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_train_and_test_must_not_overlap():
    with pytest.raises(ConfigError, match="both trained"):
        load_config(None, ["data.train=[C2,A1]", "data.test=[A1]"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "data.geometries=[{name: a, weight: 2}]"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)


RECIPES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("bench_", "study_")))
BENCHES = sorted(CONFIGS.glob("bench_*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_load(recipe):
    cfg = load_config(recipe)
    assert cfg.model.name
    from hexpress.models import list_models

    assert cfg.model.name in list_models()


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_bench_configs_resolve_every_method(bench, tmp_path):
    """Every method of a shipped benchmark resolves to a valid training config of a registered
    model, on every fold."""
    from hexpress.eval.bench import load_bench_config, method_train_config
    from hexpress.models import list_models

    cfg = load_bench_config(bench)
    for fold in cfg.folds:
        for method in cfg.methods:
            train_cfg = method_train_config(cfg, method, fold, tmp_path / "run")
            assert train_cfg.model.name in list_models()
            assert train_cfg.run.seed == cfg.seed


def test_stain_study_shares_bench_her2st_plain_runs_and_changes_only_the_stain(tmp_path):
    """The stain benchmarks' plain rows are bench_her2st.yaml's runs, and each stain variant
    differs from its plain recipe in the stain settings alone (what their comments promise)."""
    from hexpress.eval.bench import load_bench_config, method_train_config
    from hexpress.train.config import config_to_dict

    def resolved(bench, name, fold):
        m = next(m for m in bench.methods if m.name == name)
        return config_to_dict(method_train_config(bench, m, fold, tmp_path / "run"))

    main = load_bench_config(CONFIGS / "bench_her2st.yaml")
    stain = load_bench_config(CONFIGS / "bench_her2st_stain.yaml")
    alone = load_bench_config(CONFIGS / "bench_her2st_stain_pixnet.yaml")
    assert [f.overrides for f in main.folds] == [f.overrides for f in stain.folds] == [
        f.overrides for f in alone.folds]  # fmt: skip
    stain_keys = {("data", "stain"), ("augment", "hed_sigma"), ("augment", "hed_bias"),
                  ("augment", "stain_rotation_deg")}  # fmt: skip

    def without_stain(d):
        return {s: {k: v for k, v in sec.items() if (s, k) not in stain_keys}
                for s, sec in d.items()}  # fmt: skip

    for fold in main.folds:
        pix = resolved(main, "PixNet", fold)
        assert resolved(stain, "PixNet", fold) == pix
        patch = resolved(main, "EfficientNet-Lite0 patch", fold)
        assert resolved(stain, "Lite0 patch", fold) == patch
        for bench, name, plain in [
            (stain, "PixNet + Macenko + strong jitter", pix),
            (alone, "PixNet + Macenko + strong jitter", pix),
            (stain, "PixNet + Macenko", pix),
            (stain, "PixNet + strong stain jitter", pix),
            (stain, "Lite0 patch + Macenko", patch),
            (stain, "Lite0 patch + Macenko + strong jitter", patch),
        ]:
            variant = resolved(bench, name, fold)
            assert variant != plain, name
            assert without_stain(variant) == without_stain(plain), name
