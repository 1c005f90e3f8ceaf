"""hexpress._config: the dataclass <-> dict / overrides engine, on a config of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hexpress._config import apply_overrides, build_dataclass, read_yaml
from hexpress.errors import ConfigError, InputFileError


@dataclass
class Inner:
    lr: float = 1e-3
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, int] = field(default_factory=dict)
    tag: str | None = None


def test_build_checks_keys_and_types():
    cfg = build_dataclass(Outer, {"inner": {"lr": "1e-4", "names": "a"}, "extra": {"k": 2.0}})
    assert cfg.inner.lr == 1e-4 and cfg.inner.names == ["a"] and cfg.extra == {"k": 2}
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) inner.lrr; valid keys"):
        build_dataclass(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match="config inner.lr: expected a number"):
        build_dataclass(Outer, {"inner": {"lr": [1]}})


def test_overrides_are_typed_by_the_root_dataclass():
    values = apply_overrides(
        {}, ["inner.lr=2e-3", "inner.names=[x,y]", "tag=01", "extra.n=3"], Outer
    )
    cfg = build_dataclass(Outer, values)
    assert cfg.inner.lr == 2e-3 and cfg.inner.names == ["x", "y"] and cfg.tag == "01"
    assert cfg.extra == {"n": 3}
    assert build_dataclass(Outer, apply_overrides({}, ["tag=null"], Outer)).tag is None
    with pytest.raises(ConfigError, match="valid keys of inner: lr, names"):
        apply_overrides({}, ["inner.momentum=0.9"], Outer)
    with pytest.raises(ConfigError, match="single value"):
        apply_overrides({}, ["tag.sub=1"], Outer)


def test_read_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inner: {lr: 0.5}\n")
    assert read_yaml(p) == {"inner": {"lr": 0.5}}
    p.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(p)
    with pytest.raises(InputFileError):
        read_yaml(tmp_path / "missing.yaml")
