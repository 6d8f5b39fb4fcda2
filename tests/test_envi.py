"""ENVI rasters (flight lines as AVIRIS and others deliver them) read like .npy and .mat files."""

import numpy as np
import pytest

from lightnets_jax.data import envi
from lightnets_jax.data import hyperspectral as hsi
from tests.support import write_envi


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("big_endian, code", [(False, 4), (True, 4), (True, 12), (False, 5)])
def test_every_interleave_and_byte_order_reads_as_lines_samples_bands(tmp_path, interleave, big_endian, code):
    rng = np.random.default_rng(0)
    cube = rng.integers(0, 4000, (5, 7, 3)).astype(envi.DTYPES[code])  # lines, samples, bands: all different
    write_envi(tmp_path / "flight.img", cube, interleave, big_endian, code, offset=16 if big_endian else 0)
    for named in ("flight.img", "flight.img.hdr"):  # the binary or its header
        read = hsi.read_array(tmp_path / named, None, ndim=3)
        assert read.shape == (5, 7, 3)
        np.testing.assert_array_equal(read, cube)


def test_a_class_map_is_its_one_band(tmp_path):
    gt = np.arange(20, dtype=np.uint8).reshape(4, 5) % 4
    write_envi(tmp_path / "gt", gt[..., None], "bsq", code=1)
    np.testing.assert_array_equal(hsi.read_array(tmp_path / "gt", None, ndim=2), gt)
    write_envi(tmp_path / "two", np.zeros((4, 5, 2), np.uint8), "bsq", code=1)
    with pytest.raises(hsi.DataError, match="has 2 bands; a ground-truth map is one band"):
        hsi.read_array(tmp_path / "two", None, ndim=2)


def test_bad_headers_and_binaries_are_one_line_naming_the_file(tmp_path):
    cube = np.zeros((4, 5, 3), np.float32)
    write_envi(tmp_path / "cut.img", cube)
    (tmp_path / "cut.img").write_bytes((tmp_path / "cut.img").read_bytes()[:-4])
    with pytest.raises(hsi.DataError, match=r"cut.img holds 236 bytes; its header .* needs 240: the file is truncated"):
        hsi.read_array(tmp_path / "cut.img", None, ndim=3)
    write_envi(tmp_path / "odd.img", cube, code=6)  # complex64: not a raster this reads
    with pytest.raises(hsi.DataError, match=r"data type 6 is not supported; supported codes: 1 \(uint8\)"):
        hsi.read_array(tmp_path / "odd.img", None, ndim=3)
    header = tmp_path / "nobands.hdr"
    header.write_text("ENVI\nsamples = 5\nlines = 4\ndata type = 4\n")
    (tmp_path / "nobands").write_bytes(b"\0" * 80)
    with pytest.raises(hsi.DataError, match="nobands.hdr has no 'bands' field"):
        hsi.read_array(header, None, ndim=3)
    (tmp_path / "lonely.hdr").write_text("ENVI\nsamples = 5\nlines = 4\nbands = 1\ndata type = 4\n")
    with pytest.raises(hsi.DataError, match="no binary beside .*lonely.hdr"):
        hsi.read_array(tmp_path / "lonely.hdr", None, ndim=3)
    (tmp_path / "fake.hdr").write_text("not a header")
    with pytest.raises(hsi.DataError, match="fake.hdr is not an ENVI header"):
        hsi.read_array(tmp_path / "fake.hdr", None, ndim=3)
    with pytest.raises(hsi.DataError, match="--cube-key and --gt-key name arrays in .mat files"):
        hsi.read_array(tmp_path / "cut.img", "cube", ndim=3)
    (tmp_path / "flight.tif").write_bytes(b"II*\0")
    with pytest.raises(hsi.DataError, match="expected a .npy or .mat file, or an ENVI raster with its .hdr"):
        hsi.read_array(tmp_path / "flight.tif", None, ndim=3)


def test_an_envi_class_map_names_its_classes_for_training(tmp_path):
    from tests.support import write_tiny_scene

    write_tiny_scene(tmp_path)
    gt = np.load(tmp_path / "gt.npy")
    write_envi(tmp_path / "gt.img", gt[..., None].astype(np.uint8), code=1,
               extra="file type = ENVI Classification\nclass names = {Unclassified, wheat, barley,\n oats}\n")
    scene = hsi.load_scene("field", str(tmp_path / "cube.npy"), str(tmp_path / "gt.img.hdr"))
    assert scene.class_names == ("wheat", "barley", "oats")  # the tiny scene has classes 1..3
    np.testing.assert_array_equal(scene.labels, gt)
    write_envi(tmp_path / "plain.img", gt[..., None].astype(np.uint8), code=1)  # no names: numbered
    assert hsi.load_scene("field", str(tmp_path / "cube.npy"), str(tmp_path / "plain.img")).class_names[0] == "class 1"
