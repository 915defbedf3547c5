"""Images no job can use (NaN/Inf, constant): found in one pass, named, left out below a fraction,
refused above it; the record in the job's folder spares a resumed job the second pass."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_flex3d.io import image_check
from napari_flex3d.io.image_check import RECORD_NAME, exclude_unusable_images, scan_images
from napari_flex3d.io.mrc import write_map
from napari_flex3d.io.particles import OpticsGroup, ParticleSet, read_particles, write_cs, write_star

BOX, N = 16, 40


def _stack(path, n=N, seed=0):
    images = np.random.default_rng(seed).normal(size=(n, BOX, BOX)).astype(np.float32)
    write_map(path, images, 2.0)
    return images


def _damage(path, faults: dict):
    """``{image index: value or "nan"/"inf"/"const"}`` written into the stack at ``path``."""
    from napari_flex3d.io.mrc import read_header

    h = read_header(path)
    data = np.memmap(path, dtype=h.dtype, mode="r+", offset=h.data_offset, shape=(h.nz, h.ny, h.nx))
    for i, what in faults.items():
        if what == "nan":
            data[i, 3, 4] = np.nan
        elif what == "inf":
            data[i, 0, 0] = -np.inf
        else:
            data[i] = float(what)
    data.flush()
    del data


def _particles(tmp_path, n=N, fmt="star", stacks=1):
    """A STAR (or .cs) of ``n`` particles over ``stacks`` stacks of ``n // stacks`` images; its ParticleSet."""
    per = n // stacks
    paths = []
    for s in range(stacks):
        _stack(tmp_path / f"s{s}.mrcs", per, seed=s)
        paths += [f"s{s}.mrcs"] * per
    ps = ParticleSet.from_arrays(
        image_paths=np.array([str(tmp_path / p) for p in paths], dtype=object),
        image_indices=np.tile(np.arange(per), stacks), defocus_u_a=np.full(n, 1.5e4),
        optics=OpticsGroup("opticsGroup1", 1, 300.0, 2.7, 0.1, 2.0, BOX), rotations=np.tile(np.eye(3), (n, 1, 1)),
    )
    path = tmp_path / f"particles.{fmt}"
    (write_star if fmt == "star" else write_cs)(ps, path)
    return read_particles(path)


def test_nan_inf_zero_and_constant_images_are_found_and_named(tmp_path):
    ps = _particles(tmp_path, stacks=2)
    _damage(tmp_path / "s0.mrcs", {2: "nan", 5: 0.0})
    _damage(tmp_path / "s1.mrcs", {0: "inf", 19: 3.5})
    found = scan_images(ps, chunk_bytes=7 * 4 * BOX * BOX)  # chunks of 7 images straddle the faults
    assert found.rows.tolist() == [2, 5, 20, 39]
    assert found.names == ("000003@s0.mrcs", "000006@s0.mrcs", "000001@s1.mrcs", "000020@s1.mrcs")
    assert found.reasons == ("NaN or infinite pixels", "constant: every pixel 0", "NaN or infinite pixels",
                             "constant: every pixel 3.5")
    line = found.summary("particles.star")
    assert line.startswith("particles.star: 4 of 40 images (10 %) are unusable (2 with NaN or infinite pixels, 2 constant): ")
    assert "000003@s0.mrcs (NaN or infinite pixels); 000006@s0.mrcs (constant: every pixel 0); 000001@s1.mrcs" in line
    assert line.endswith("... (1 more)")


def test_a_few_are_left_out_with_a_warning_and_the_rest_kept_in_order(tmp_path):
    ps = _particles(tmp_path)
    _damage(tmp_path / "s0.mrcs", {1: "nan", 30: 0.0})
    lines = []
    with pytest.warns(UserWarning, match=r"2 of 40 images \(5 %\) are unusable .* these images are left out"):
        usable, found = exclude_unusable_images(ps, tmp_path / "job", max_fraction=0.05, log=lines.append)
    assert len(usable) == 38 and found.count == 2 and len(lines) == 1
    keep = np.setdiff1d(np.arange(40), [1, 30])
    np.testing.assert_array_equal(usable.image_indices, ps.image_indices[keep])
    assert np.isfinite(usable.images(np.arange(38))).all()  # nothing unusable reaches a kernel
    assert usable.table["rlnImageName"].tolist() == ps.table["rlnImageName"].iloc[keep].tolist()


def test_more_than_the_fraction_is_refused_naming_the_option(tmp_path):
    ps = _particles(tmp_path)
    _damage(tmp_path / "s0.mrcs", {i: 0.0 for i in range(3)})
    with pytest.raises(ValueError, match=r"3 of 40 images \(7.5 %\) are unusable \(3 constant\): 000001@s0.mrcs \(constant: every pixel 0\).*"
                                         r"more than --max-bad-image-fraction 0.05 of the images.*raise --max-bad-image"):
        exclude_unusable_images(ps, None)
    with pytest.warns(UserWarning):
        assert len(exclude_unusable_images(ps, None, max_fraction=0.1)[0]) == 37
    _damage(tmp_path / "s0.mrcs", {i: 0.0 for i in range(N)})
    with pytest.raises(ValueError, match="40 of 40 images"):  # never a job on no images
        exclude_unusable_images(ps, None, max_fraction=1.0)
    with pytest.raises(ValueError, match=r"--max-bad-image-fraction must lie in \[0, 1\], got 2"):
        exclude_unusable_images(ps, None, max_fraction=2.0)


def test_every_image_usable_returns_the_same_set_and_no_warning(tmp_path):
    ps = _particles(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        usable, found = exclude_unusable_images(ps, tmp_path)
    assert usable is ps and found.count == 0
    assert json.loads((tmp_path / RECORD_NAME).read_text())["rows"] == []


def test_the_record_spares_a_second_scan_and_goes_stale_with_the_stacks(tmp_path, monkeypatch):
    ps = _particles(tmp_path)
    _damage(tmp_path / "s0.mrcs", {4: "nan"})
    with pytest.warns(UserWarning):
        exclude_unusable_images(ps, tmp_path)
    calls = []
    real_scan = image_check.scan_images
    monkeypatch.setattr(image_check, "scan_images", lambda *a, **k: calls.append(1) or real_scan(*a, **k))
    with pytest.warns(UserWarning, match="000005@s0.mrcs"):
        usable, _ = exclude_unusable_images(ps, tmp_path)  # a resumed job: the record, not the stacks
    assert calls == [] and len(usable) == N - 1
    with pytest.warns(UserWarning):
        exclude_unusable_images(read_particles(tmp_path / "particles.star"), tmp_path, read_only=True)
    assert calls == []
    _stack(tmp_path / "s0.mrcs", N + 1)  # another stack (a size the record does not know): read again
    _damage(tmp_path / "s0.mrcs", {7: 0.0})
    with pytest.warns(UserWarning, match=r"000008@s0.mrcs \(constant"):
        exclude_unusable_images(read_particles(tmp_path / "particles.star"), tmp_path)
    assert calls == [1]
    (tmp_path / RECORD_NAME).write_text("{torn")  # a damaged record is read past, not trusted
    with pytest.warns(UserWarning, match="000008@s0.mrcs"):
        exclude_unusable_images(read_particles(tmp_path / "particles.star"), tmp_path)
    assert calls == [1, 1]


def test_cryosparc_images_are_named_by_blob_path_and_index(tmp_path):
    ps = _particles(tmp_path, fmt="cs")
    _damage(tmp_path / "s0.mrcs", {6: "inf"})
    found = scan_images(ps)
    assert found.rows.tolist() == [6] and found.names[0].endswith("s0.mrcs (blob/idx 6)")


def test_a_stack_shorter_than_the_metadata_is_refused_before_any_work(tmp_path):
    ps = _particles(tmp_path, stacks=2)
    _stack(tmp_path / "s1.mrcs", 15)  # 20 images promised
    with pytest.raises(ValueError, match=r"particles.star: 5 particle\(s\) in 1 stack\(s\) point past the end of "
                                         r"their stack .*s1.mrcs holds 15 image\(s\), 000016@s1.mrcs asks for image 20"):
        scan_images(ps)


def test_a_stack_of_another_box_is_refused(tmp_path):
    ps = _particles(tmp_path)
    write_map(tmp_path / "s0.mrcs", np.ones((N, 12, 12), np.float32), 2.0)
    with pytest.raises(ValueError, match=r"s0.mrcs: the stack holds 12 x 12 images but the particle metadata says box \[16\]"):
        scan_images(ps)
