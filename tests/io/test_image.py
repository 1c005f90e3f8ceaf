import numpy as np
import pytest

from hexpress._files import TEMP_GLOB
from hexpress.errors import FormatError, InputFileError, UnitsError
from hexpress.io import ArrayImage, TiffImage, open_image, write_tiff


@pytest.fixture
def noise(rng):
    return (rng.random((700, 900, 3)) * 255).astype(np.uint8)


def test_pyramidal_tiff_roundtrip_keeps_pixels_and_mpp(tmp_path, noise):
    path = write_tiff(tmp_path / "slide.tif", noise, mpp=0.5, tile=128, min_level_side=200)
    img = open_image(path)
    assert isinstance(img, TiffImage)
    assert (img.width, img.height, img.mpp) == (900, 700, 0.5)
    assert len(img.level_downsamples) >= 3
    np.testing.assert_array_equal(img.read_region(13, 27, 300, 200), noise[27:227, 13:313])
    assert not list(tmp_path.glob(TEMP_GLOB))


def test_read_region_resamples_to_requested_mpp(noise):
    img = ArrayImage(noise, mpp=0.5)
    out = img.read_region(0, 0, 400, 200, mpp=2.0)
    assert out.shape == (50, 100, 3)
    # a 4x4 average of noise is close to the block mean
    expected = noise[:200, :400].reshape(50, 4, 100, 4, 3).mean((1, 3))
    assert np.abs(out.astype(float) - expected).mean() < 12


def test_tiles_on_one_grid_agree_with_one_large_read(noise):
    img = ArrayImage(noise, mpp=0.5)
    whole = img.read_region(0, 0, 300, 250, mpp=1.3, units="target")
    tile = img.read_region(77, 41, 101, 90, mpp=1.3, units="target")
    # Pillow resamples in fixed point: values may differ by one grey level, never more
    diff = np.abs(whole[41:131, 77:178].astype(int) - tile)
    assert diff.max() <= 1 and diff.mean() < 0.05


def test_outside_the_image_reads_as_white_glass(noise):
    img = ArrayImage(noise, mpp=0.5)
    out = img.read_region(-20, -10, 40, 20)
    assert (out[:10, :20] == 255).all()
    np.testing.assert_array_equal(out[10:, 20:], noise[:10, :20])


def test_a_read_mostly_outside_the_image_resamples_only_the_image(noise, monkeypatch):
    # a dense map's tile at a coarse mpp: its margins reach far past a small slide
    img = ArrayImage(noise, mpp=0.5)
    built = []
    real = img._read_padded
    monkeypatch.setattr(img, "_read_padded", lambda *a: built.append(a[1:]) or real(*a))
    big = img.read_region(-500, -500, 1225, 1175, mpp=4.0, units="target")
    assert big.shape == (1175, 1225, 3)
    # the source arrays built stay near the image's size, not the region's (9,800 x 9,400 px)
    assert built and max((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in built) < 1.2 * 900 * 700
    # the same pixels as resampling the whole padded region (the one-pass reference), to
    # Pillow's fixed-point grey level; far from the image, exactly the white of glass
    ref = img._resample(0, -4000, -4000, 9800, 9400, 1225, 1175, pad=10)
    diff = np.abs(big.astype(int) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.01
    assert (big[:480] == 255).all() and (big[:, 740:] == 255).all()
    inside = img.read_region(0, 0, 225, 175, mpp=4.0, units="target")
    assert np.abs(big[500:675, 500:725].astype(int) - inside).max() <= 1


def test_tiff_is_read_lazily(tmp_path, noise, monkeypatch):
    path = write_tiff(tmp_path / "slide.tif", noise, mpp=0.25, tile=64, min_level_side=10_000)
    img = open_image(path)
    seen = []
    original = img._levels[0].__getitem__
    monkeypatch.setattr(img, "_levels", [_Spy(img._levels[0], seen)])
    img.read_region(64, 64, 64, 64)
    assert seen and all(s[0].stop - s[0].start <= 64 + 8 for s in seen), seen
    del original


class _Spy:
    def __init__(self, arr, seen):
        self.arr, self.seen = arr, seen

    def __getitem__(self, index):
        self.seen.append(index)
        return self.arr[index]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputFileError, match="not found.*nope.tif"):
        open_image(tmp_path / "nope.tif")


def test_no_mpp_says_how_to_give_it(tmp_path, noise):
    from PIL import Image

    Image.fromarray(noise).save(tmp_path / "he.png")
    with pytest.raises(UnitsError, match="--mpp"):
        open_image(tmp_path / "he.png")
    assert open_image(tmp_path / "he.png", mpp=1.0).width == 900


def test_unreadable_and_unsupported_images(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FormatError, match="broken.jpg"):
        open_image(bad, mpp=1.0)
    other = tmp_path / "he.xyz"
    other.write_bytes(b"")
    with pytest.raises(FormatError, match="Supported"):
        open_image(other, mpp=1.0)


def test_slide_larger_than_pillows_bomb_limit_opens_quietly(tmp_path, noise, monkeypatch):
    """A whole-slide JPEG or PNG is legitimately huge: no DecompressionBomb warning or error."""
    import warnings

    from PIL import Image

    path = tmp_path / "slide.png"
    Image.fromarray(noise[:64, :80]).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 80 px is over twice this
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = open_image(path, mpp=0.5)
        assert (img.width, img.height) == (80, 64)
        np.testing.assert_array_equal(img.read_region(0, 0, 80, 64, mpp=0.5), noise[:64, :80])
    assert Image.MAX_IMAGE_PIXELS == 1000  # the user's own setting is left as it was


def test_read_region_units_name_the_frame(noise):
    img = ArrayImage(noise, mpp=0.5)
    # target px at 1.0 µm/px are 2 level-0 px each
    t = img.read_region(10, 20, 30, 40, mpp=1.0, units="target")
    lv0 = img.read_region(20, 40, 60, 80, mpp=1.0)
    assert t.shape == (40, 30, 3)
    np.testing.assert_array_equal(t, lv0)
    assert not hasattr(img, "read_at")  # one reader; the frame is a keyword
    with pytest.raises(ValueError, match="units must be one of"):
        img.read_region(0, 0, 4, 4, units="um")
