"""The training workflow: ``train(config) -> RunResult``.

One entry function for every model (after litgpt): dense models learn from crops holding several
units, patch models from spot-centred patches, both with Adam (paper: lr 5e-4, weight decay 1e-4)
and the loss MSE + lam * (1 - PCC) summed over geometries; closed-form baselines (frozen encoder
+ PCA + ridge, training mean) are fitted in one pass over the training patches. What differs
between model kinds lives in a task object (:mod:`hexpress.train.tasks`); this loop drives it.

A run goes through ``optim.phases`` in order (default: one end-to-end phase of ``max_steps``):
in a ``frozen`` phase the encoder does not learn and dense models read its pyramid from the
feature cache (:mod:`hexpress.train.feature_cache`), in ``finetune`` everything learns. One Adam
optimiser spans every parameter (a frozen one has no gradient, so Adam leaves it alone), so the
training state saves and resumes the same way in any phase.

A run folder holds::

    config.yaml                 the resolved config
    log.csv                     step, split (train/val), loss, mse, pcc, lr, time_s
    last.{safetensors,json}     checkpoint every run.ckpt_every steps (hexpress checkpoint)
    state.{safetensors,json}    training state: model + optimiser tensors, step, RNG states
    model.{safetensors,json}    the final checkpoint
    summary.json                what :class:`RunResult` reports
    tensorboard/                when TensorBoard is installed and run.tensorboard is on

Nothing is pickled: tensors go to safetensors, everything else to JSON. Every file is written to
a temporary name and moved into place, so a killed run leaves the previous state intact and
``resume=True`` continues from it; because each batch is a pure function of (seed, step, rank)
and the optimiser and RNG states are restored, a resumed run reaches the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hexpress._device import MixedPrecision, loader_kwargs, place_model
from hexpress._files import atomic_path
from hexpress._files import sha256_file as _sha256
from hexpress._files import write_file as _atomic_text
from hexpress.data.sample import Sample
from hexpress.errors import CheckpointError, ConfigError, OutputExistsError
from hexpress.train.config import TrainConfig, config_to_dict, save_config
from hexpress.train.data import load_training_data
from hexpress.train.distributed import DistInfo, barrier, cleanup, init_distributed, resolve_device
from hexpress.train.tasks import FINETUNE, TrainingTask, make_task

__all__ = ["RunResult", "train", "load_training_state", "STATE", "LAST", "FINAL", "BEST"]

log = logging.getLogger(__name__)

STATE = "state"
LAST = "last"
FINAL = "model"
BEST = "best"  # the best validation so far, with run.select: best_val
LOG_COLUMNS = ("step", "split", "loss", "mse", "pcc", "lr", "time_s")
# config keys that change how a run is watched and stored, not what its weights are
_REUSE_FREE = {
    "run.out_dir",
    "run.log_every",
    "run.ckpt_every",
    "run.num_workers",
    "run.device",
    "run.threads",
    "run.progress",
    "run.tensorboard",
    "run.feature_cache",  # cached and on-the-fly frozen features are the same numbers
}
# ... and those a resumed run may change as well (how long it runs, which step it keeps)
_RESUME_FREE = _REUSE_FREE | {"run.select", "optim.max_steps", "optim.epochs", "run.val_every"}


@dataclass
class RunResult:
    """What a training run produced.

    Attributes:
        out_dir: the run folder.
        checkpoint: the final checkpoint's JSON file (load with
            :func:`hexpress.models.load_checkpoint`).
        steps: optimiser steps done in total (0 for closed-form baselines).
        start_step: the step this call started from (> 0 when resumed).
        train_loss: mean training loss over the last logged window (None: none).
        val: validation metrics per geometry: ``{"mse", "pcc", "n_units", "n_genes"}``.
        genes: the genes the model predicts.
        model_mpp: µm per input pixel of the model.
        wall_s: seconds this call took.
        config: the resolved config.
        model: the trained model (unwrapped, on the training device, in eval mode).
    """

    out_dir: Path
    checkpoint: Path
    steps: int
    start_step: int
    train_loss: float | None
    val: dict[str, dict[str, float]]
    genes: list[str]
    model_mpp: float
    wall_s: float
    config: TrainConfig | None = field(repr=False, default=None)
    model: nn.Module | None = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "checkpoint": str(self.checkpoint),
            "steps": self.steps,
            "start_step": self.start_step,
            "train_loss": self.train_loss,
            "val": self.val,
            "n_genes": len(self.genes),
            "model_mpp": self.model_mpp,
            "wall_s": round(self.wall_s, 3),
        }


# -- small helpers ------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    # hexpress draws from seeded Generators; the global state is seeded for third-party code
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _identity(x):
    return x


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not key.startswith(("model.kwargs", "data.samples")):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _lr_at(step: int, config: TrainConfig, max_steps: int) -> float:
    o = config.optim
    f = 1.0
    if o.warmup_steps and step < o.warmup_steps:
        f = (step + 1) / o.warmup_steps
    if o.schedule == "cosine" and max_steps > 0:
        f *= 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))
    return o.lr * f


def _metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    from hexpress.models.loss import per_gene_pcc

    if pred.shape[0] == 0:
        return {"mse": float("nan"), "pcc": float("nan"), "n_units": 0, "n_genes": 0}
    pred, target = pred.detach().float().cpu(), target.detach().float().cpu()
    pcc, valid = per_gene_pcc(pred, target)
    n = int(valid.sum())
    return {
        "mse": float((pred - target).pow(2).mean()),
        "pcc": float(pcc[valid].mean()) if n else float("nan"),
        "n_units": int(pred.shape[0]),
        "n_genes": n,
    }


# -- training state (no pickle) -------------------------------------------------------------------


def _save_state(out: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()  # noqa: NPY002
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_state = random.getstate()
    with atomic_path(out / f"{STATE}.safetensors") as tmp:
        save_file(tensors, tmp)
    meta = {
        "format": "hexpress-train-state",
        "step": int(step),
        "param_groups": sd["param_groups"],
        "optim_scalars": scalars,
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "tensors_sha256": _sha256(out / f"{STATE}.safetensors"),
    }
    _atomic_text(out / f"{STATE}.json", json.dumps(meta))


def load_training_state(out_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a run's training state (checked against its hash).

    Raises:
        CheckpointError: missing, foreign or half-written state.
    """
    from safetensors.torch import load_file

    out = Path(out_dir)
    jpath, tpath = out / f"{STATE}.json", out / f"{STATE}.safetensors"
    if not jpath.is_file() or not tpath.is_file():
        raise CheckpointError(
            f"{out} holds no training state ({jpath.name} + {tpath.name}); nothing to resume. "
            "Start the run without resume."
        )
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{jpath} is not valid JSON ({e}).") from e
    if meta.get("format") != "hexpress-train-state":
        raise CheckpointError(f"{jpath} is not a hexpress training state.")
    if _sha256(tpath) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"{tpath} does not match the hash in {jpath.name}: it was modified or half written."
        )
    return meta, load_file(str(tpath), device="cpu")


def _restore_state(meta: dict, tensors: dict, model: nn.Module, opt: torch.optim.Optimizer):
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd, strict=True)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, sc in meta.get("optim_scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    # the moments in their parameter's own layout (channels-last weights, `place_model`): the
    # fused Adam step walks a parameter and its moments in memory order, so a moment loaded
    # contiguous next to a channels-last weight would update the wrong elements
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = meta["rng_numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss)
    )
    v, st, g = meta["rng_python"]
    random.setstate((v, tuple(st), g))


# -- the log ------------------------------------------------------------------------------------


class _Log:
    """CSV log (+ TensorBoard when available), written by the main process only."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool):
        self.path = out / "log.csv"
        rows = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        self.file = open(self.path, "w", newline="")  # noqa: SIM115  (closed in close())
        self.writer = csv.DictWriter(self.file, fieldnames=LOG_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                log.debug("TensorBoard is not installed; logging to CSV only")

    def row(self, step: int, split: str, values: dict, lr: float, t: float) -> None:
        self.writer.writerow(
            {
                "step": step,
                "split": split,
                "loss": _fmt(values.get("loss")),
                "mse": _fmt(values.get("mse")),
                "pcc": _fmt(values.get("pcc")),
                "lr": f"{lr:.6g}",
                "time_s": f"{t:.3f}",
            }
        )
        self.file.flush()
        if self.tb is not None:
            for k in ("loss", "mse", "pcc"):
                v = values.get(k)
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v) -> str:
    return "" if v is None else f"{float(v):.6g}"


# -- the run ------------------------------------------------------------------------------------


def config_changes(saved: dict, config: TrainConfig, free: set[str] = _REUSE_FREE) -> list[str]:
    """``"key (old -> new)"`` for every setting, outside ``free``, in which ``config`` differs
    from a run's saved ``config.yaml`` (``saved``, as read)."""
    a, b = _flatten(saved), _flatten(config_to_dict(config))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in free)
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff]


def _check_resume_config(saved: dict, config: TrainConfig, path: Path) -> None:
    diff = config_changes(saved, config, _RESUME_FREE)
    if diff:
        raise ConfigError(
            f"cannot resume: the config differs from the run's {path} in "
            f"{', '.join(diff[:8])}. Resume with "
            "the same config (only max_steps/epochs and logging options may change), or start "
            "a new run folder."
        )


def _prepare_out(out: Path, config: TrainConfig, resume: bool, main: bool) -> int:
    """Check the run folder; returns the step to start from (0: fresh)."""
    state_json = out / f"{STATE}.json"
    start = 0
    if resume and state_json.is_file():
        meta = json.loads(state_json.read_text())
        start = int(meta.get("step", 0))
        cfg_path = out / "config.yaml"
        if cfg_path.is_file():
            import yaml

            _check_resume_config(yaml.safe_load(cfg_path.read_text()), config, cfg_path)
    elif resume:
        log.warning("%s has no training state yet; starting from step 0", out)
    elif main and out.is_dir() and (state_json.is_file() or (out / f"{FINAL}.json").is_file()):
        raise OutputExistsError(
            f"{out} already holds a training run. Continue it with --resume (resume=True), or "
            "choose another folder (--out / run.out_dir)."
        )
    return start


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def _validate(task: TrainingTask) -> dict[str, dict[str, float]]:
    """Metrics per validation geometry over the task's fixed validation batches."""
    task.model.eval()
    names = task.val_names
    preds: list[list[torch.Tensor]] = [[] for _ in names]
    targets: list[list[torch.Tensor]] = [[] for _ in names]
    for batch in task.val_batches():
        for g, pair in enumerate(task.val_predictions(batch)):
            if pair is not None:
                preds[g].append(pair[0].cpu())
                targets[g].append(pair[1])
    return {
        name: _metrics(torch.cat(preds[g]), torch.cat(targets[g]))
        for g, name in enumerate(names)
        if preds[g]
    }


def _phases(cfg: TrainConfig, n_train_units: int, world: int) -> list[tuple[str, int, int]]:
    """``[(phase, first step, end step)]`` of the run, in order."""
    o = cfg.optim
    if o.phases:
        out, at = [], 0
        for ph in o.phases:
            ((name, n),) = ph.items()
            out.append((name, at, at + int(n)))
            at += int(n)
        if o.max_steps != at:
            log.info("optim.phases last %d steps in all (optim.max_steps=%d is not used)", at,
                     o.max_steps)  # fmt: skip
        return out
    max_steps = o.max_steps
    if o.epochs is not None:
        max_steps = math.ceil(o.epochs * n_train_units / (o.batch_size * world))
    return [(FINETUNE, 0, max_steps)]


def _mean_metric(val: dict, key: str) -> float | None:
    vals = [v[key] for v in val.values() if v.get("n_units")]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    samples: Mapping[str, Sample | Sequence[Sample]] | None = None,
) -> RunResult:
    """Train (or fit) a model as ``config`` says and write the run folder.

    Args:
        config: the resolved config (:func:`hexpress.train.load_config`).
        resume: continue the run in ``config.run.out_dir`` from its last training state.
        samples: already-read samples by id (one per geometry), instead of reading
            ``config.data`` from disk (tests, notebooks).

    Returns:
        :class:`RunResult`.

    Raises:
        ConfigError: an invalid combination (e.g. crop not a multiple of the stride).
        OutputExistsError: the folder holds a run and ``resume`` is false.
    """
    from hexpress.models import create_model, describe_model, save_checkpoint

    t_start = time.perf_counter()
    cfg = config
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = init_distributed(device)
    try:
        return _train(cfg, resume, samples, device, dist, t_start, create_model,
                      describe_model, save_checkpoint)  # fmt: skip
    finally:
        cleanup(dist)


def _train(cfg, resume, samples, device, dist: DistInfo, t_start, create_model, describe_model,
           save_checkpoint) -> RunResult:  # fmt: skip
    out = Path(cfg.run.out_dir)
    main = dist.is_main
    start_step = _prepare_out(out, cfg, resume, main)
    barrier(dist)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        log.info("run folder: %s", out)
    _seed_everything(cfg.run.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    data = load_training_data(cfg.data, seed=cfg.run.seed, samples=samples)
    genes = data.genes
    kwargs = dict(cfg.model.kwargs)
    torch.manual_seed(cfg.run.seed)  # the same initial weights whatever was drawn before
    model = create_model(cfg.model.name, n_genes=len(genes), **kwargs)
    world = dist.world_size
    task = make_task(cfg, data, model, describe_model(cfg.model.name)["kind"], device=device,
                     rank=dist.rank, world_size=world, is_main=main,
                     barrier=lambda: barrier(dist))  # fmt: skip
    place_model(model, device)

    def save(name: str, step: int, val: dict) -> Path:
        _, jpath = save_checkpoint(
            out / name,
            model,
            model_name=cfg.model.name,
            model_kwargs={**kwargs, "n_genes": len(genes)},
            model_mpp=task.model_mpp,
            genes=genes,
            normalization=data.normalization,
            stain=data.stain,
            config=config_to_dict(cfg),
            extra={
                "step": int(step),
                "val": val,
                "geometries": data.geometries,
                "train_samples": [s.sample_id for s in data.train],
                "val_samples": [s.sample_id for s in data.val],
            },
        )
        return jpath

    def result(steps: int, train_loss: float | None, val: dict, ckpt: Path) -> RunResult:
        res = RunResult(
            out_dir=out,
            checkpoint=ckpt,
            steps=steps,
            start_step=start_step,
            train_loss=train_loss,
            val=val,
            genes=genes,
            model_mpp=task.model_mpp,
            wall_s=time.perf_counter() - t_start,
            config=cfg,
            model=model.eval(),
        )
        if main:
            _atomic_text(out / "summary.json", json.dumps(res.to_dict(), indent=1))
        return res

    if task.closed_form:
        if cfg.optim.phases:
            raise ConfigError(
                f"{cfg.model.name!r} is fitted in closed form; optim.phases does not apply."
            )
        task.fit()
        val = _validate(task) if data.has_val() and main else {}
        return result(0, None, val, save(FINAL, 0, val) if main else out / f"{FINAL}.json")

    phases = _phases(cfg, data.n_train_units(), world)
    max_steps = phases[-1][2]
    if start_step == 0 and cfg.model.init_bias and hasattr(model, "set_output_bias"):
        model.set_output_bias(torch.from_numpy(data.target_mean()), scale=task.scale)
    params = [p for p in model.parameters() if p.requires_grad]
    # one optimiser over every parameter: a parameter frozen in a phase has no gradient there,
    # so Adam leaves it (and its moments) alone, and the state saves and resumes in any phase
    # fused: one kernel per step for all parameters instead of a dozen small ops per tensor
    # (on 2 CPU cores 14 ms instead of 89 ms for 0.5 M parameters while other jobs ran)
    opt = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                           fused=device.type in ("cpu", "cuda"))  # fmt: skip
    if start_step:
        meta, tensors = load_training_state(out)
        _restore_state(meta, tensors, model, opt)  # copied into the placed weights
        log.info("resumed from step %d", start_step)
        if start_step > max_steps:
            raise ConfigError(
                f"the run is at step {start_step}, beyond max_steps={max_steps}; raise "
                "optim.max_steps (or the steps of optim.phases) to continue it."
            )
    logger = _Log(out, start_step, cfg.run.tensorboard) if main else None
    from tqdm.auto import tqdm

    bar = tqdm(
        total=max_steps,
        initial=start_step,
        desc=f"train {cfg.model.name}",
        disable=not (main and cfg.run.progress),
        dynamic_ncols=True,
    )
    window: list[tuple[float, float, float]] = []
    last_loss: float | None = None
    val: dict = {}
    best = _Best(out, cfg.run.select == "best_val", start_step)
    t0 = time.perf_counter()
    amp = MixedPrecision(device, cfg.run.precision)  # bf16 autocast on GPUs by default
    try:
        for phase, first, end in phases:
            steps = range(max(first, start_step), end)
            if not len(steps):
                continue
            task.enter(phase)
            if len(phases) > 1:
                log.info("phase %s: steps %d to %d", phase, steps.start + 1, end)
            dataset = task.dataset(phase)
            net = task.network(phase)
            if dist.distributed:
                net = nn.parallel.DistributedDataParallel(
                    net, device_ids=[device.index] if device.type == "cuda" else None
                )
            batches = _batches(dataset, steps, cfg, device)
            for step in steps:
                batch = next(batches)
                lr = _lr_at(step, cfg, max_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss, parts = task.loss(amp.wrap(net), batch)
                opt.zero_grad(set_to_none=True)
                amp.step(loss, opt, params, cfg.optim.grad_clip)
                lv = float(loss.detach())
                if not math.isfinite(lv):
                    raise ConfigError(
                        f"the loss became {lv} at step {step + 1}; lower optim.lr or check the "
                        "data."
                    )
                ms = [_metrics(p, t) for p, t in parts]
                window.append(
                    (
                        lv,
                        float(np.nanmean([m["mse"] for m in ms])) if ms else float("nan"),
                        float(np.nanmean([m["pcc"] for m in ms])) if ms else float("nan"),
                    )
                )
                done = step + 1
                bar.update(1)
                if done % cfg.run.log_every == 0 or done == max_steps:
                    arr = np.asarray(window, dtype=np.float64)
                    with np.errstate(all="ignore"):
                        row = dict(zip(("loss", "mse", "pcc"), np.nanmean(arr, axis=0),
                                       strict=True))  # fmt: skip
                    last_loss = float(row["loss"])
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                    if logger:
                        logger.row(done, "train", row, lr, time.perf_counter() - t0)
                    window = []
                want_val = data.has_val() and (
                    (cfg.run.val_every and done % cfg.run.val_every == 0) or done == max_steps
                )
                if want_val and main:
                    val = _validate(task)
                    task.enter(phase)
                    vrow = {"mse": _mean_metric(val, "mse"), "pcc": _mean_metric(val, "pcc")}
                    if logger:
                        logger.row(done, "val", vrow, lr, time.perf_counter() - t0)
                    log.info("step %d validation: %s", done, val)
                    if best.improves(vrow["pcc"]):
                        save(BEST, done, val)
                        best.keep(done, val, vrow["pcc"])
                every = cfg.run.ckpt_every
                if main and every and done % every == 0 and done < max_steps:
                    save(LAST, done, val)
                    _save_state(out, model, opt, done)
                if every and done % every == 0:
                    barrier(dist)
        ckpt = out / f"{FINAL}.json"
        if main:
            save(LAST, max_steps, val)
            _save_state(out, model, opt, max_steps)
            if best.step is not None and best.step != max_steps:
                best.restore(model)
                last_pcc = _mean_metric(val, "pcc")
                log.info("run.select best_val: the model holds step %d (validation PCC %.4f; "
                         "step %d had %s)", best.step, best.pcc, max_steps,
                         "none" if last_pcc is None else f"{last_pcc:.4f}")  # fmt: skip
                ckpt = save(FINAL, best.step, best.val)
            else:
                if best.enabled and best.step is None:
                    log.warning("run.select best_val: no validation units, so the model holds "
                                "the last step")  # fmt: skip
                ckpt = save(FINAL, max_steps, val)
        barrier(dist)
    finally:
        bar.close()
        if logger:
            logger.close()
    return result(max_steps, last_loss, val, ckpt)


class _Best:
    """The best validation of a run (``run.select: best_val``): its step and PCC; its weights are
    the ``best`` checkpoint, so a resumed run goes on comparing against it."""

    def __init__(self, out: Path, enabled: bool, start_step: int) -> None:
        self.enabled, self.out = enabled, out
        self.step: int | None = None
        self.pcc = -math.inf
        self.val: dict = {}
        meta = out / f"{BEST}.json"
        if enabled and start_step and meta.is_file():
            extra = json.loads(meta.read_text())["extra"]
            pcc = _mean_metric(extra["val"], "pcc")
            if int(extra["step"]) <= start_step and pcc is not None:  # a later step's is void
                self.step, self.val, self.pcc = int(extra["step"]), extra["val"], pcc

    def improves(self, pcc: float | None) -> bool:
        return self.enabled and pcc is not None and pcc > self.pcc

    def keep(self, step: int, val: dict, pcc: float) -> None:
        self.step, self.val, self.pcc = step, val, pcc

    def restore(self, model: nn.Module) -> None:
        """Load the best checkpoint's weights into ``model``."""
        from hexpress.models.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(self.out / BEST).model.state_dict())


def _batches(dataset, steps: range, cfg: TrainConfig, device: torch.device) -> Iterator:
    """The batches of ``steps`` (each a pure function of its step), in loader workers or here."""
    if cfg.run.num_workers > 0:
        return iter(
            torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                sampler=list(steps),
                collate_fn=_identity,
                **loader_kwargs(device, cfg.run.num_workers),
            )
        )
    return (dataset[s] for s in steps)
