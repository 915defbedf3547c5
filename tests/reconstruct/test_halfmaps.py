"""Motion-corrected half maps on a simulated hinge, against the simulator's ground truth.

The flow generator is the oracle one (fitted to the simulator's true motion, latents =
the true coordinates), so this tests the reconstruction itself: the same L-BFGS solver
with and without the flow, at a box finer than the training box. The half maps are the
session's (tests/conftest.py ``oracle_hinge_halfmaps``: 1,500 particles at box 64, flow at
box 32, 10 iterations), the ones tests/reconstruct/test_moving_domain.py checks inside masks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_flex3d.io.mrc import read_map
from napari_flex3d.reconstruct.halfmaps import HalfMapDone, ReconstructFinished, ReconstructProgress
from napari_flex3d.reconstruct.validation import masked_fsc

BOX, APIX, TRAIN_BOX, N = 64, 3.0, 32, 1500


@pytest.fixture(scope="module")
def solved(oracle_hinge_halfmaps):
    s = oracle_hinge_halfmaps
    return s.root, s.root / "sim", s.events, s.masks["arm"]


def _read(path):
    return torch.as_tensor(np.asarray(read_map(path).data, dtype=np.float32))


def test_writes_the_promised_files_and_reports(solved):
    root, _, events, _ = solved
    rec = root / "rec"
    for name in ("half_A", "half_B", "map"):
        for mode in ("flex", "rigid"):
            assert (rec / f"{mode}_{name}.mrc").is_file()
    assert (rec / "fsc.csv").is_file() and (rec / "fsc.png").is_file()
    report = json.loads((rec / "report.json").read_text())
    assert report["box"] == BOX and report["training_box"] == TRAIN_BOX
    assert report["particles_used"]["A"] + report["particles_used"]["B"] == N
    header = (rec / "fsc.csv").read_text().splitlines()[0].split(",")
    assert {"fsc_flex", "fsc_rigid", "fsc_flex_arm", "fsc_rigid_arm"} <= set(header)
    assert any(isinstance(e, ReconstructProgress) for e in events)
    assert sum(isinstance(e, HalfMapDone) for e in events) == 4
    assert isinstance(events[-1], ReconstructFinished)
    assert read_map(rec / "flex_map.mrc").apix == pytest.approx(APIX, rel=1e-4)


def test_flex_explains_the_data_better_and_recovers_the_rest_state(solved):
    root, _, events, arm = solved
    report = events[-1].report
    for half in ("A", "B"):  # same solver, same particles: the flow lowers the objective
        assert report["maps"]["flex"]["objective"][half] < 0.99 * report["maps"]["rigid"]["objective"][half]
    rec, truth = root / "rec", root / "sim" / "truth"
    info = json.loads((truth / "truth.json").read_text())
    rest = _read(truth / next(s["file"] for s in info["states"] if np.allclose(s["coords"], 0.0)))
    average = _read(truth / "average.mrc")
    flex = 0.5 * (_read(rec / "flex_half_A.mrc") + _read(rec / "flex_half_B.mrc"))
    rigid = 0.5 * (_read(rec / "rigid_half_A.mrc") + _read(rec / "rigid_half_B.mrc"))
    shells = slice(4, 14)  # 48 Å to 14 Å (a 192 Å box), where there is signal
    m = torch.as_tensor(arm)
    flex_rest = masked_fsc(flex, rest, APIX, mask=m).curve[shells]
    rigid_rest = masked_fsc(rigid, rest, APIX, mask=m).curve[shells]
    rigid_avg = masked_fsc(rigid, average, APIX, mask=m).curve[shells]
    # the canonical map is the rest state of the moving arm; the rigid map is its average
    assert flex_rest.mean() > rigid_rest.mean() + 0.005, (flex_rest, rigid_rest)
    assert rigid_avg.mean() > rigid_rest.mean()


def test_flex_half_maps_are_no_worse_globally_and_correlate_past_training_nyquist(solved):
    _, _, events, _ = solved
    report = events[-1].report
    flex, rigid = report["maps"]["flex"]["global"], report["maps"]["rigid"]["global"]
    assert flex["fsc_0143_a"] <= rigid["fsc_0143_a"] * 1.05
    # reconstructing at box 64 from a model trained at box 32 (Nyquist 12 Å)
    assert report["training_nyquist_a"] == pytest.approx(2 * APIX * BOX / TRAIN_BOX)
    assert flex["fsc_0143_a"] < report["training_nyquist_a"]
