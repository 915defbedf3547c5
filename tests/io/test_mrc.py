"""MRC maps and stacks: README values, every supported mode, header faults."""

from __future__ import annotations

import gzip

import mrcfile
import numpy as np
import pytest

from napari_flex3d.io.mrc import open_stack, read_header, read_map, write_map
from io_fixtures import copy_formats, fmt  # noqa: F401 (pytest fixtures)

# file: (shape zyx, mode, apix or None, min, max, mean, first voxel or None)
MAPS = {
    "mrcfile/EMD-3197.map": ((20, 20, 20), 2, 11.4, -4.13375, 5.57674, 0.783612, -1.80131),
    "mrcfile/emd_3197.map.gz": ((20, 20, 20), 2, 11.4, -4.13375, 5.57674, 0.783612, -1.80131),
    "MRCFile.jl/emd_3197_f16.mrc": ((20, 20, 20), 12, 11.4, -4.13281, 5.57812, 0.78411, None),
    "MRCFile.jl/emd_3197_proj.mrcs": ((10, 20, 20), 2, 11.4, -60.2175, 97.4114, 18.9247, None),
    "cylindra/beta-tubulin.mrc": ((20, 20, 20), 2, 5.144, -1.08228, 7.63705, 0.0602881, None),
    "cryodrgn/spike-vol.mrc": ((128, 16, 16), 2, 8.0, -6.88688, 26.1024, 0.0, None),
    "relion/ref_shifted_image.mrc": ((1, 32, 32), 2, None, -4.86655, 6.53521, 0.134987, 0.0911561),
    "cryodrgn/relion31.mrcs": ((5, 256, 256), 2, 1.0, -4.38332, 4.40074, None, 0.285425),
    "cryodrgn/empiar_10076_7.mrc": ((7, 320, 320), 2, None, -4.34950, 5.53454, None, 0.682213),
    "simplecryoem/relion_proj_batch.mrcs": ((24, 64, 64), 2, 3.54, -0.053975, 0.083099, None, 0.00597805),
    "mrcfile/EMD-3001.map": ((73, 25, 43), 2, 0.44825, -0.368143, 0.72161, 0.000532967, 0.0428345),
}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_maps_match_readme(fmt, name):
    shape, mode, apix, lo, hi, mean, first = MAPS[name]
    m = read_map(fmt / name)
    assert m.data.shape == shape and m.data.dtype == np.float32 and m.mode == mode
    if apix is None:
        assert m.apix is None
        with pytest.raises(ValueError, match="--apix"):
            m.require_apix()
    else:
        assert m.apix == pytest.approx(apix, rel=1e-5)
    np.testing.assert_allclose([m.data.min(), m.data.max()], [lo, hi], atol=1e-4)
    if mean is not None:
        assert m.data.astype(np.float64).mean() == pytest.approx(mean, rel=2e-6, abs=1e-5)
    if first is not None and name != "mrcfile/EMD-3001.map":
        assert m.data.ravel()[0] == pytest.approx(first, abs=1e-6)


def test_emd3001_axis_order_and_extended_header(fmt):
    h = read_header(fmt / "mrcfile/EMD-3001.map")
    assert h.data_offset == 1184 and h.axis_order == (3, 1, 2) and h.ispg == 4
    assert (h.nz, h.ny, h.nx) == (25, 43, 73)
    np.testing.assert_allclose(h.voxel_size_xyz, (0.44825, 0.3925, 0.45875), rtol=1e-5)
    m = read_map(fmt / "mrcfile/EMD-3001.map")
    # the first voxel of the file is the first element in file order, voxel (x, y, z) = (0, 0, 0)
    assert m.data[0, 0, 0] == pytest.approx(0.0428345, abs=1e-6)
    # independent oracle: mrcfile's file-order array, re-ordered to (z, y, x)
    with mrcfile.open(fmt / "mrcfile/EMD-3001.map", permissive=True) as mrc:
        ref = np.asarray(mrc.data)  # (sections=Y, rows=X, cols=Z)
    np.testing.assert_array_equal(m.data, ref.transpose(2, 0, 1))


def test_f16_equals_float32_map(fmt):
    a = read_map(fmt / "MRCFile.jl/emd_3197_f16.mrc").data
    b = read_map(fmt / "mrcfile/EMD-3197.map").data
    diff = np.abs(a - b)
    bad = np.argwhere(diff > 5e-3)
    assert sorted(map(tuple, bad.tolist())) == [(3, 4, 17), (17, 4, 1)]
    assert a[3, 4, 17] == 4.0


def test_gz_equals_plain(fmt):
    assert gzip.decompress((fmt / "mrcfile/emd_3197.map.gz").read_bytes()) == (fmt / "mrcfile/EMD-3197.map").read_bytes()
    np.testing.assert_array_equal(read_map(fmt / "mrcfile/emd_3197.map.gz").data, read_map(fmt / "mrcfile/EMD-3197.map").data)


def test_pointmass(fmt):
    m = read_map(fmt / "simplecryoem/pointmass.mrc")
    assert m.data.shape == (64, 64, 64)
    assert [tuple(i) for i in np.argwhere(m.data != 0)] == [(32, 32, 49)]


def test_header_faults_stack(fmt):
    # relion31.mrcs: blank MAP id and zero machine stamp: byte order is guessed
    s = open_stack(fmt / "cryodrgn/relion31.mrcs")
    assert isinstance(s, np.memmap) and s.shape == (5, 256, 256)
    assert s[0, 1, 0] == pytest.approx(-0.668950, abs=1e-6)


@pytest.mark.parametrize("mode,dtype", [(0, np.int8), (1, np.int16), (2, np.float32), (6, np.uint16), (12, np.float16)])
def test_all_modes_via_mrcfile_writer(tmp_path, mode, dtype):
    rng = np.random.default_rng(mode)
    data = (rng.integers(0, 100, size=(3, 6, 5))).astype(dtype)
    path = tmp_path / f"mode{mode}.mrcs"
    with mrcfile.new(path) as mrc:  # independent writer
        mrc.set_data(data)
        mrc.voxel_size = 1.5
    h = read_header(path)
    assert h.mode == mode
    m = read_map(path)
    np.testing.assert_array_equal(m.data, data.astype(np.float32))
    assert m.apix == 1.5
    np.testing.assert_array_equal(np.asarray(open_stack(path)[[2, 0]], dtype=np.float32), data[[2, 0]].astype(np.float32))


def test_big_endian(tmp_path):
    data = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    path = tmp_path / "be.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 2.0
    assert read_header(path).dtype.byteorder == ">"
    np.testing.assert_array_equal(read_map(path).data, data.astype(np.float32))


def test_write_map_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 9, 10)).astype(np.float32)
    write_map(tmp_path / "v.mrc", vol, apix=1.7, label="napari-flex3d test")
    with mrcfile.open(tmp_path / "v.mrc") as mrc:  # independent reader
        np.testing.assert_array_equal(mrc.data, vol)
        assert mrc.voxel_size.x == pytest.approx(1.7) and mrc.header.ispg == 1
    m = read_map(tmp_path / "v.mrc")
    np.testing.assert_array_equal(m.data, vol)
    assert m.labels == ("napari-flex3d test",) and m.apix == pytest.approx(1.7)
    write_map(tmp_path / "s.mrcs", vol, apix=1.7)
    assert read_header(tmp_path / "s.mrcs").ispg == 0
    with pytest.raises(ValueError, match="NaN"):
        write_map(tmp_path / "bad.mrc", np.full((2, 2, 2), np.nan), apix=1.0)


def test_truncated_and_garbage(copy_formats, tmp_path):
    base = copy_formats("cryodrgn/relion31.mrcs")
    path = base / "cryodrgn/relion31.mrcs"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match="relion31.mrcs: truncated"):
        open_stack(path)
    with pytest.raises(ValueError, match="truncated"):
        read_map(path)
    (tmp_path / "short.mrc").write_bytes(raw[:100])
    with pytest.raises(ValueError, match="short.mrc: not an MRC file"):
        read_map(tmp_path / "short.mrc")
    bad_mode = bytearray(raw[:1024 + 64])
    bad_mode[12:16] = np.int32(4).tobytes()  # complex mode
    (tmp_path / "complex.mrc").write_bytes(bytes(bad_mode))
    with pytest.raises(ValueError, match="unsupported MRC mode 4"):
        read_map(tmp_path / "complex.mrc")
    with pytest.raises(FileNotFoundError):
        read_map(tmp_path / "absent.mrc")
    (tmp_path / "x.map.gz").write_bytes(b"not gzip at all" * 100)
    with pytest.raises(ValueError, match="gzip"):
        read_map(tmp_path / "x.map.gz")
