"""Unusable particle images through the jobs: training leaves them out (train.log names them), a run
stopped mid-epoch resumes bit-identically from its record without reading the stacks again, and
reconstruction and analysis leave out the same rows, so the latents still line up."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from napari_flex3d.io import image_check
from napari_flex3d.io.checkpoint import load_checkpoint
from napari_flex3d.io.image_check import RECORD_NAME
from napari_flex3d.io.mrc import read_header
from napari_flex3d.io.particles import read_particles
from napari_flex3d.model.run import checkpoint_path
from napari_flex3d.training import events as ev
from napari_flex3d.training.loop import train_run

SMALL = dict(epochs=2, preview_every=0, latent_init="zero", threads=None)  # threads: leave torch's setting alone
BAD = {4: "nan", 50: 0.0}  # image index (0-based) -> fault


@pytest.fixture(scope="module")
def damaged_sim(tiny_sim, tmp_path_factory):
    """A copy of the tiny simulation with one NaN image and one all-zero image."""
    out = tmp_path_factory.mktemp("damaged_sim")
    for name in ("particles.star", "particles.mrcs", "consensus.mrc"):
        shutil.copyfile(tiny_sim / name, out / name)
    h = read_header(out / "particles.mrcs")
    data = np.memmap(out / "particles.mrcs", dtype=h.dtype, mode="r+", offset=h.data_offset, shape=(h.nz, h.ny, h.nx))
    data[4, 2, 2] = np.nan
    data[50] = 0.0
    data.flush()
    del data
    return out


@pytest.fixture(scope="module")
def reference(damaged_sim, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("unusable_reference")
    with pytest.warns(UserWarning, match=r"2 of 120 images"):
        list(train_run(tiny_config(damaged_sim, out, checkpoint_minutes=0.0, **SMALL), out))
    return out


def test_training_leaves_them_out_and_names_them_in_the_log(reference):
    log = (reference / "train.log").read_text()
    assert ("particles.star: 2 of 120 images (1.67 %) are unusable (1 with NaN or infinite pixels, 1 constant): "
            "000005@particles.mrcs (NaN or infinite pixels); 000051@particles.mrcs (constant: every pixel 0); these "
            "images are left out") in log
    assert load_checkpoint(checkpoint_path(reference))["latents"].shape == (118, 1)
    assert np.load(reference / "latents.npy").shape == (118, 1)
    kept = read_particles(reference / "particles.star")
    assert len(kept) == 118 and not np.isin(kept.image_indices, list(BAD)).any()


def test_a_stopped_run_resumes_bit_identically_without_a_second_scan(reference, damaged_sim, tiny_config, tmp_path,
                                                                      monkeypatch):
    with pytest.warns(UserWarning):
        gen = train_run(tiny_config(damaged_sim, tmp_path, checkpoint_minutes=1e-9, **SMALL), tmp_path)
        for e in gen:
            if isinstance(e, ev.StepLoss) and (e.epoch, e.step) == (1, 1):
                break
        gen.close()
    assert json.loads((tmp_path / RECORD_NAME).read_text())["rows"] == sorted(BAD)

    def no_scan(*_, **__):
        raise AssertionError("a resumed run read the stacks again")

    monkeypatch.setattr(image_check, "scan_images", no_scan)
    with pytest.warns(UserWarning, match="2 of 120 images"):
        list(train_run(None, tmp_path, resume=True))
    a, b = load_checkpoint(checkpoint_path(reference)), load_checkpoint(checkpoint_path(tmp_path))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["rng_torch"], b["rng_torch"])
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), np.load(reference / "latents.npy"))
    assert (tmp_path / "train.log").read_text().count("these images are left out") == 2  # the start and the resumption


def test_analysis_reads_the_runs_record_and_lines_up_with_the_latents(reference, monkeypatch):
    from napari_flex3d.analyze.pipeline import read_run_particles
    from napari_flex3d.model.run import load_run

    monkeypatch.setattr(image_check, "scan_images", lambda *a, **k: pytest.fail("analysis read the stacks again"))
    said = []
    with pytest.warns(UserWarning, match="2 of 120"):
        ps, _ = read_run_particles(load_run(reference).config, None, reference, log=said.append)
    assert len(ps) == 118 and "000005@particles.mrcs" in said[0]


def test_reconstruction_leaves_out_the_same_images(reference, damaged_sim, tmp_path, capsys):
    from napari_flex3d.cli import main, one_line_warning

    argv = ["reconstruct", "--run", str(reference), "--particles", str(damaged_sim / "particles.star"), "--out",
            str(tmp_path / "rec"), "--iterations", "1", "--no-rigid", "--device", "cpu", "--quiet"]
    with pytest.warns(UserWarning, match=r"2 of 120 images \(1.67 %\) are unusable") as caught:
        assert main(argv) == 0
    line = one_line_warning("reconstruct")(caught[0].message, UserWarning, "x.py", 1)
    assert line.startswith("flex3d reconstruct: warning: /") and line.count("\n") == 1  # on the terminal
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert report["unusable_images"] == {"count": 2, "of": 120, "first": ["000005@particles.mrcs", "000051@particles.mrcs"]}
    assert sum(report["particles_used"].values()) == 118
    assert main(argv + ["--max-bad-image-fraction", "0.01"]) == 2
    assert "more than --max-bad-image-fraction 0.01" in capsys.readouterr().err
