import pytest

from hexpress.errors import ConfigError
from hexpress.io import FORMATS, READERS, read_sample


def test_registry_covers_every_format():
    assert FORMATS == ("legacy-st", "visium", "visium-hd", "xenium", "h5ad")
    assert set(READERS) == set(FORMATS)


def test_unknown_format_lists_valid_ones(visium_v2):
    with pytest.raises(ConfigError, match="valid formats: legacy-st, visium, visium-hd"):
        read_sample(visium_v2.root, "visium2")


def test_read_sample_dispatches_by_name(visium_v2, visium_hd, legacy):
    assert read_sample(visium_v2.root, "visium", section="X").sample_id == "X"
    assert read_sample(visium_hd.root, "visium-hd", bin_um=8).technology == "visium-hd"
    # a folder with a single section needs no --section
    assert read_sample(legacy.root, "legacy-st").sample_id == "S1"


@pytest.mark.realdata
def test_legacy_with_several_sections_needs_one(her2st_dir):
    with pytest.raises(ConfigError, match="A1, C2, C3, C4, C5, C6"):
        read_sample(her2st_dir, "legacy-st")


def test_an_option_of_another_format_is_named(visium_v2):
    from hexpress.errors import ConfigError
    from hexpress.io import read_sample

    with pytest.raises(ConfigError, match=r"cell_shape do not apply to format 'visium'"):
        read_sample(visium_v2.root, "visium", cell_shape="polygon")
