import pytest

from hexpress.errors import ConfigError
from hexpress.sim import SimConfig


def test_defaults_are_valid_and_normalised():
    cfg = SimConfig()
    assert cfg.size_mm == (1.0, 1.0)
    assert cfg.shape_px == (2000, 2000)
    assert sum(cfg.domain_fractions.values()) == pytest.approx(1.0)
    assert sum(cfg.gene_fractions.values()) == pytest.approx(1.0)
    assert cfg.to_dict()["size_mm"] == [1.0, 1.0]


def test_rectangular_size():
    cfg = SimConfig(size_mm=(0.8, 0.4), mpp=0.25)
    assert cfg.shape_px == (1600, 3200)
    assert cfg.size_um == (800.0, 400.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size_mm": -1}, "size_mm"),
        ({"size_mm": (1, 2, 3)}, "size_mm"),
        ({"mpp": 0}, "mpp"),
        ({"seed": -3}, "seed"),
        ({"n_genes": 5}, "n_genes"),
        ({"domain_fractions": {"bone": 1.0}}, "unknown key"),
        ({"gene_fractions": {"noise": -1.0}}, "non-negative"),
        ({"cell_density_per_mm2": {"fat": 10.0}}, "adipocyte_diameter_um"),
        ({"dispersion": 0}, "dispersion"),
        ({"noise_std": -1}, "noise_std"),
    ],
)
def test_invalid_values_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SimConfig(**kwargs)
