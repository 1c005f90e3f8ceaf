"""The end-to-end demo: simulate, train PixNet and a patch baseline, predict every scale, report.

:func:`demo_config` is an ordinary benchmark config (:mod:`hexpress.eval.bench`) over two
simulated slides: PixNet and the EfficientNet-Lite0 single-patch baseline learn from the 55 µm
Visium spots of one slide, and predict the other slide's 100 µm legacy ST spots, 55 µm Visium
spots and 16 / 8 / 2 µm Visium HD bins, each scored against the truth there. Steps and sizes
are chosen so that the whole run takes minutes on two CPU cores; the numbers show the system
working, not what the models reach with full training (see ``configs/bench_synthetic.yaml``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_config"]


def demo_config(out_dir: str | Path = "hexpress-demo", *, steps: int = 200) -> dict:
    """The demo's benchmark config as a dict (:func:`~hexpress.eval.bench.load_bench_config`).

    Args:
        out_dir: everything goes here: ``slides/`` (the simulated data) and the report.
        steps: optimiser steps of each trained model.
    """
    out = Path(out_dir)
    train, test = out / "slides" / "train", out / "slides" / "test"

    def visium(root: Path) -> dict:
        return {"path": f"{root}/visium/outs", "format": "visium",
                "image": f"{root}/visium/image.tif"}  # fmt: skip

    data = {
        "samples": {"train": visium(train), "test": visium(test)},
        "train": ["train"],
        "test": ["test"],
        "val_fraction": 0.15,
        "val_block_um": 250.0,
        "genes": {"n": 50, "method": "heg"},
        "model_mpp": 1.0,
        "crop_px": 192,
        "geometries": [{"name": "visium_55um"}],
    }
    run = {"ckpt_every": 50, "val_every": steps, "tensorboard": False}
    hd = f"{test}/visium_hd/binned_outputs"
    hd_image = f"{test}/visium_hd/image.tif"
    return {
        "name": "hexpress demo (synthetic slide)",
        "out_dir": str(out / "report"),
        "seed": 0,
        "simulate": [
            {"out": str(train), "seed": 0, "size_mm": 1.5, "n_genes": 100},
            {"out": str(test), "seed": 1, "size_mm": 1.5, "n_genes": 100},
        ],
        "methods": [
            {
                "name": "PixNet",
                "config": {
                    "data": data,
                    "model": {"name": "pixnet", "kwargs": {"mode": "density"}},
                    "optim": {"batch_size": 4, "max_steps": steps},
                    "run": run,
                },
            },
            {
                "name": "EfficientNet-Lite0 patch",
                "config": {
                    "data": data,
                    "model": {
                        "name": "lite0_patch",
                        "kwargs": {"patch_um": 64.0, "input_px": 128},
                    },  # fmt: skip
                    "optim": {"batch_size": 16, "max_steps": steps},
                    "run": run,
                },
            },
        ],
        "predict": {"batch_size": 16},
        "report": {
            "title": "hexpress demo: PixNet vs single-patch baseline",
            "n_heg": 20,
            "n_hvg": 20,
        },  # fmt: skip
        "cross_scale": {
            "max_units": 2000,
            "scales": [
                {
                    "name": "spot_100um",
                    "path": f"{test}/legacy_st",
                    "format": "legacy-st",
                    "section": "SIM1",
                },
                {"name": "spot_55um", **visium(test)},
                {
                    "name": "bin_16um",
                    "path": hd,
                    "format": "visium-hd",
                    "image": hd_image,
                    "options": {"bin_um": 16},
                },
                {
                    "name": "bin_8um",
                    "path": hd,
                    "format": "visium-hd",
                    "image": hd_image,
                    "options": {"bin_um": 8},
                },
                {
                    "name": "bin_2um",
                    "path": hd,
                    "format": "visium-hd",
                    "image": hd_image,
                    "options": {"bin_um": 2},
                },
            ],
        },  # fmt: skip
    }
