"""Ablation studies: a grid of training settings, each scored on validation blocks of the training
sections of every fold, with the choice per family made from those scores alone.

``hexpress study CONFIG`` (or :func:`run_study`) expands a study config into runs, trains each
(a finished run is reused, a killed one resumes), reads its validation metrics and writes one
table. A config looks like::

    name: PRESTIGE-ST ablation
    out_dir: runs/study_prestige
    overrides: [data.val_fraction=0.1, data.val_block_um=500]   # every run: validation blocks
    folds:
      - {name: test_A, overrides: [data.split=test_A]}
      - {name: test_C, overrides: [data.split=test_C]}
    families:
      - name: patch
        recipe: effnet_patch_her2st.yaml          # relative to this file
        overrides: [optim.max_steps=150]
        axes:                                     # the first level of each is its base
          patch_um:
            "112": [model.kwargs.patch_um=112]
            "56": [model.kwargs.patch_um=56]
          encoder:
            lite0: [model.name=lite0_patch]
            lite2: {overrides: [model.name=lite2_patch], encoder: tf_efficientnet_lite2}
          stain:
            "off": []
            "on": [data.stain.method=macenko]
        cross: [patch_um, encoder]                # optional; default: every axis

The axes named in ``cross`` are fully crossed (every combination of one level per axis, the
others at their base level); each axis not in it is varied alone, one level at a time, with
every other axis at its base. ``cross`` may also list several groups (``[[a, b], [a, c]]``):
each group is crossed and the settings are their union. Without ``cross`` the whole grid is
run; ``cross: []`` varies one axis at a time around the base setting.

A level is a list of overrides, or a mapping with ``overrides`` and ``encoder`` (an encoder the
level needs, for models whose name fixes it). A run whose overrides do not make a valid config
here (an option this install lacks), that names an unregistered model or encoder, or whose
encoder's packaged weights are not installed, is **skipped** with the reason in the table, so a
study written for options still to come runs with what exists.

Only validation metrics are read (``data.val_fraction`` blocks of the training sections, or
``data.val`` sections of the training side); a config whose runs have no validation part is
refused. Test sections are never read by a run. ``out_dir`` then holds ``study.csv`` / ``.md``
(one row per setting: validation PCC per fold and their mean, and each run's training seconds)
and ``chosen.json`` (per family, the setting with the best mean validation PCC, and its
overrides).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hexpress._files import atomic_path, write_file, write_json
from hexpress.errors import ConfigError, HexpressError
from hexpress.train.config import load_config, read_yaml

__all__ = ["StudyRun", "expand_study", "run_study", "load_study"]

log = logging.getLogger(__name__)


@dataclass
class StudyRun:
    """One setting of one family on one fold.

    Attributes:
        family: the family name.
        fold: the fold name.
        levels: ``{axis: level}`` of this setting.
        recipe: the training recipe.
        overrides: every override, in precedence order (study, family, fold, levels).
        out_dir: the run folder.
        skipped: why the run cannot be made here (``None``: it can).
    """

    family: str
    fold: str
    levels: dict[str, str]
    recipe: Path
    overrides: list[str]
    out_dir: Path
    skipped: str | None = None
    val: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None

    @property
    def setting(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.levels.items())


def load_study(path: str | Path) -> dict:
    """A study config as a dict, with its folder (recipes are relative to it)."""
    path = Path(path)
    doc = read_yaml(path)
    for key in ("families", "folds"):
        if not isinstance(doc.get(key), list) or not doc[key]:
            raise ConfigError(f"{path}: '{key}' must be a non-empty list.")
    unknown = sorted(set(doc) - {"name", "out_dir", "overrides", "folds", "families"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {unknown}; valid: name, out_dir, overrides, folds, families."
        )
    doc["_dir"] = str(path.parent)
    return doc


def _level(name: str, axis: str, value) -> tuple[list[str], str | None]:
    if isinstance(value, list):
        return [str(v) for v in value], None
    if isinstance(value, dict) and set(value) <= {"overrides", "encoder"}:
        return [str(v) for v in value.get("overrides", [])], value.get("encoder")
    raise ConfigError(
        f"family {name!r}, axis {axis!r}: a level is a list of overrides or "
        f"{{overrides: [...], encoder: NAME}}, got {value!r}."
    )


def _why_not(recipe: Path, overrides: list[str], needs: list[str]) -> str | None:
    """Why this run cannot be made here, or ``None``."""
    from hexpress.models import describe_model, list_models
    from hexpress.models.encoders import encoder_spec, encoder_weights_available, list_encoders

    try:
        cfg = load_config(recipe, overrides)
    except HexpressError as e:  # e.g. an option this install does not have
        return f"not available here: {str(e).split('; valid')[0]}"
    if cfg.model.name not in list_models():
        return f"model {cfg.model.name!r} is not registered here"
    encoders = list_encoders()
    used = cfg.model.kwargs.get("encoder") or describe_model(cfg.model.name).get("encoder")
    for enc in [used, *needs]:
        if enc is not None and enc not in encoders:
            return f"encoder {enc!r} is not registered here"
    wants_weights = cfg.model.kwargs.get("pretrained", True) and not cfg.model.kwargs.get(
        "encoder_weights"
    )
    if used is not None and wants_weights and encoder_spec(used).weights == "package":
        if not encoder_weights_available(used):
            return f"the packaged weights of encoder {used!r} are not installed here"
    if not (cfg.data.val or cfg.data.val_fraction > 0):
        return "no validation part (set data.val_fraction or data.val)"
    return None


def _design(family: str, names: list[str], choices: list[list], cross) -> list[tuple]:
    """The level combinations of a family. ``cross`` is a group of axes or a list of groups:
    every combination of each group's axes, with the other axes at their base (first) level;
    then each axis in no group alone at each of its other levels, every axis else at its base."""
    nested = isinstance(cross, list) and any(isinstance(g, list) for g in cross)
    groups = cross if nested else [cross]
    for g in groups:
        if not isinstance(g, list) or not all(a in names for a in g):
            raise ConfigError(
                f"family {family!r}: cross must be a list of its axes {names} (or a list of "
                f"such lists), got {cross!r}."
            )
    for a, levels in zip(names, choices, strict=True):
        if not levels:
            raise ConfigError(f"family {family!r}, axis {a!r}: no levels.")
    base = [levels[0] for levels in choices]
    combos = []
    for g in groups:
        crossed = [i for i, a in enumerate(names) if a in g]
        for pick in itertools.product(*(choices[i] for i in crossed)):
            combo = list(base)
            for i, c in zip(crossed, pick, strict=True):
                combo[i] = c
            combos.append(tuple(combo))
    in_groups = {a for g in groups for a in g}
    for i, a in enumerate(names):
        if a not in in_groups:
            combos += [tuple(base[:i] + [c] + base[i + 1 :]) for c in choices[i][1:]]
    unique = {}
    for combo in combos:  # a setting two groups share runs once, where it first comes
        unique.setdefault(tuple(c[0] for c in combo), combo)
    return list(unique.values())


def expand_study(doc: dict) -> list[StudyRun]:
    """Every run of a study config (:func:`load_study`), skipped ones included, in order."""
    base = Path(doc["_dir"])
    out = Path(doc.get("out_dir", "runs/study"))
    runs = []
    for fam in doc["families"]:
        name = fam.get("name")
        if not name or "recipe" not in fam:
            raise ConfigError(f"every family needs a name and a recipe, got {fam!r}.")
        unknown = sorted(set(fam) - {"name", "recipe", "overrides", "axes", "cross"})
        if unknown:
            raise ConfigError(
                f"family {name!r}: unknown key(s) {unknown}; valid: name, recipe, overrides, "
                "axes, cross."
            )
        axes = fam.get("axes") or {}
        if not isinstance(axes, dict):
            raise ConfigError(f"family {name!r}: axes must be a mapping of axis -> levels.")
        names = list(axes)
        for a in names:
            if not isinstance(axes[a], dict):
                raise ConfigError(
                    f"family {name!r}, axis {a!r}: levels must be a mapping of level name -> "
                    f"overrides, got {axes[a]!r}."
                )
        choices = [[(lv, *_level(name, a, v)) for lv, v in axes[a].items()] for a in names]
        combos = _design(name, names, choices, fam.get("cross", names))
        for fold in doc["folds"]:
            for combo in combos:
                levels = {a: str(c[0]) for a, c in zip(names, combo, strict=True)}
                ovr = [*doc.get("overrides", []), *fam.get("overrides", []),
                       *fold.get("overrides", [])]  # fmt: skip
                needs = []
                for c in combo:
                    ovr += c[1]
                    if c[2]:
                        needs.append(c[2])
                tag = "_".join(f"{a}-{v}" for a, v in levels.items()) or "default"
                run_dir = out / "runs" / fold["name"] / name / tag
                ovr.append(f"run.out_dir={run_dir}")
                recipe = base / fam["recipe"]
                runs.append(
                    StudyRun(
                        name,
                        fold["name"],
                        levels,
                        recipe,
                        ovr,
                        run_dir,
                        _why_not(recipe, ovr, needs),
                    )  # fmt: skip
                )
    return runs


def _score(run: StudyRun) -> float | None:
    vals = [v.get("pcc") for v in run.val.values() if v.get("n_units")]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def run_study(path: str | Path, *, dry_run: bool = False) -> dict:
    """Expand, train (unless ``dry_run``) and tabulate a study.

    Returns:
        ``{"runs": [...], "table": [...], "chosen": {...}}``; with ``dry_run`` the runs only
        (what would be trained, and what is skipped and why).
    """
    import pandas as pd

    from hexpress.eval.report import markdown_table
    from hexpress.train.trainer import train

    doc = load_study(path)
    runs = expand_study(doc)
    listing = [
        {
            "family": r.family,
            "fold": r.fold,
            "setting": r.setting,
            "out_dir": str(r.out_dir),
            "skipped": r.skipped,
            "finished": (r.out_dir / "summary.json").is_file(),  # before this call
            "overrides": r.overrides,
        }  # fmt: skip
        for r in runs
    ]
    for r in runs:
        if r.skipped:
            log.warning("skipped %s / %s / %s: %s", r.family, r.fold, r.setting, r.skipped)
    if dry_run:
        return {"runs": listing}
    for r in runs:
        if r.skipped:
            continue
        summary = r.out_dir / "summary.json"
        if not summary.is_file():
            cfg = load_config(r.recipe, r.overrides)
            train(cfg, resume=(r.out_dir / "state.json").is_file())
        done = json.loads(summary.read_text())
        r.val, r.wall_s = done.get("val", {}), done.get("wall_s")
    folds = [f["name"] for f in doc["folds"]]
    rows = {}
    for r in runs:
        row = rows.setdefault((r.family, r.setting), {"family": r.family, "setting": r.setting})
        row[f"val_pcc_{r.fold}"] = None if r.skipped else _score(r)
        row[f"train_s_{r.fold}"] = None if r.wall_s is None else round(r.wall_s)
        if r.skipped:
            row["skipped"] = r.skipped
    table = []
    for row in rows.values():
        got = [row.get(f"val_pcc_{f}") for f in folds]
        row["val_pcc_mean"] = sum(got) / len(got) if all(g is not None for g in got) else None
        table.append(row)
    chosen = {}
    for fam in dict.fromkeys(r["family"] for r in table):
        ok = [r for r in table if r["family"] == fam and r["val_pcc_mean"] is not None]
        if ok:
            best = max(ok, key=lambda r: r["val_pcc_mean"])
            levels = next(
                x.levels for x in runs if x.family == fam and x.setting == best["setting"]
            )
            chosen[fam] = {"setting": best["setting"], "levels": levels,
                           "val_pcc_mean": best["val_pcc_mean"]}  # fmt: skip
    out = Path(doc.get("out_dir", "runs/study"))
    out.mkdir(parents=True, exist_ok=True)
    order = ["family", "setting", *(f"val_pcc_{f}" for f in folds), "val_pcc_mean",
             *(f"train_s_{f}" for f in folds), "skipped"]  # fmt: skip
    df = pd.DataFrame(table)
    df = df[[c for c in order if c in df.columns]]
    with atomic_path(out / "study.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_file(out / "study.md", markdown_table(df))
    write_json(out / "chosen.json", chosen)
    return {"runs": listing, "table": table, "chosen": chosen}
