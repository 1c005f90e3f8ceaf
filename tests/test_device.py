"""hexpress._device: device choice, autocast dtype, copies and the mixed-precision step."""

from __future__ import annotations

import pytest
import torch

from hexpress import _device as D
from hexpress.errors import ConfigError


def test_resolve_device_on_a_machine_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "_mps_available", lambda: False)
    assert D.resolve_device("auto") == D.resolve_device(None) == torch.device("cpu")
    assert D.resolve_device(torch.device("cpu")).type == "cpu"
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(ConfigError, match="not available|no CUDA"):
            D.resolve_device(name)


def test_resolve_device_picks_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert D.resolve_device("auto") == torch.device("cuda", 1)  # rank 3 of 2 GPUs
    assert D.resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="2 CUDA"):
        D.resolve_device("cuda:2")


def test_autocast_dtype_per_device(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert D.autocast_dtype(cpu, "auto") is None and D.autocast_dtype(cpu, "fp32") is None
    with pytest.raises(ConfigError, match="needs a GPU"):
        D.autocast_dtype(cpu, "bf16")
    with pytest.raises(ConfigError, match="precision"):
        D.autocast_dtype(cpu, "int8")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert D.autocast_dtype(gpu, "auto") == torch.bfloat16
    assert D.autocast_dtype(gpu, "fp16") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert D.autocast_dtype(gpu, "auto") == torch.float16
    # training never picks float16 on its own (it needs loss scaling)
    assert D.MixedPrecision(gpu, "auto").dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    amp = D.MixedPrecision(gpu, "auto")
    net = torch.nn.Linear(2, 2)
    wrapped = amp.wrap(net)
    assert amp.dtype == torch.bfloat16 and wrapped is not net and wrapped.module is net
    assert D.MixedPrecision(cpu).wrap(net) is net  # float32: the model itself


def test_cpu_copies_and_loader_settings():
    cpu = torch.device("cpu")
    t = torch.arange(6)
    assert D.to_device(t, cpu) is t and D.pin(t, cpu) is t
    assert D.loader_kwargs(cpu) == {"pin_memory": False, "num_workers": 0}
    kw = D.loader_kwargs(cpu, 2)
    assert kw["num_workers"] == 2 and kw["persistent_workers"] and kw["prefetch_factor"] == 2


def test_mixed_precision_step_on_cpu_is_a_plain_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    ref = torch.nn.Linear(3, 1)
    ref.load_state_dict(lin.state_dict())
    x = torch.rand(4, 3)
    w0 = lin.weight.detach().clone()
    amp = D.MixedPrecision(torch.device("cpu"))
    assert amp.dtype is None and amp.scaler is None
    for model, step in ((lin, "amp"), (ref, "plain")):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = amp.forward(model, x) if step == "amp" else model(x)
        loss = (out**2).mean()
        if step == "amp":
            amp.step(loss, opt, list(model.parameters()), grad_clip=0.01)
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
            opt.step()
    torch.testing.assert_close(lin.weight, ref.weight)
    assert not torch.equal(lin.weight, w0)  # a step was taken


def test_prepare_model_is_channels_last_and_eval():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout()).train()
    out = D.prepare_model(m, torch.device("cpu"))
    assert not out.training
    assert out[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_place_model_keeps_the_parameters_an_optimiser_holds():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1)).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = [id(p) for p in m.parameters()]
    D.place_model(m, torch.device("cpu"))
    assert m.training and [id(p) for p in m.parameters()] == before
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in m.parameters()
               if p.ndim == 4)  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    m(x).square().mean().backward()
    w = m[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(w, m[0].weight)  # the optimiser steps the placed weights
