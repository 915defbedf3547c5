"""Independent flows per half set (``flex3d train --half-set A|B``, ``flex3d reconstruct --run A --run-b B``).

A flow generator trained on all particles is shared by both half maps and correlates them
beyond their signal; the gold-standard remedy trains one model per half set. These tests
run the real CLI on a tiny hinge (box 24, 200 particles, 1 epoch): each half run holds
exactly its half's particles in input order, and the flex half map A of the independent
reconstruction is the one solved directly with run A's flow (and B with run B's), which
differs from what run A's flow gives for half B (so the check can fail).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_flex3d.cli import main
from napari_flex3d.io.mrc import read_map
from napari_flex3d.io.particles import read_particles, write_star
from napari_flex3d.reconstruct.halfmaps import ReconstructFinished, half_run_rows, solve_half_maps
from napari_flex3d.simulate.dataset import simulate_dataset

ITERATIONS = 3


def _train(sim, out, half, seed):
    argv = [
        "train", "--particles", str(sim / "particles.star"), "--map", str(sim / "consensus.mrc"), "--out", str(out),
        "--latent-dim", "1", "--hidden", "16", "--layers", "2", "--epochs", "1", "--warmup-epochs", "0",
        "--batch", "50", "--kernel", "linear", "--latent-init", "random", "--latent-grid", "5",
        "--latent-steps", "1", "--flow-init-a", "3.0", "--preview-every", "0", "--threads", "1",
        "--seed", str(seed), "--quiet",
    ]
    if half:
        argv += ["--half-set", half]
    return main(argv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("half_flows")
    threads = torch.get_num_threads()
    try:
        simulate_dataset(root / "sim", n_particles=200, box=24, apix=8.0, snr=1.0, motion="hinge", seed=0)
        assert _train(root / "sim", root / "run_A", "A", seed=0) == 0
        assert _train(root / "sim", root / "run_B", "B", seed=1) == 0
        rc = main(["reconstruct", "--run", str(root / "run_A"), "--run-b", str(root / "run_B"),
                   "--particles", str(root / "sim" / "particles.star"), "--out", str(root / "rec"),
                   "--iterations", str(ITERATIONS), "--chunk", "64", "--quiet"])
        assert rc == 0
    finally:
        torch.set_num_threads(threads)
    return root


def _read(path) -> np.ndarray:
    return np.asarray(read_map(path).data, dtype=np.float32)


def test_half_runs_hold_their_half_in_input_order(runs):
    full = read_particles(runs / "sim" / "particles.star")
    for half, label in (("A", 0), ("B", 1)):
        run = runs / f"run_{half}"
        rows = np.flatnonzero(full.half_set == label)
        assert 0 < rows.size < len(full)
        assert json.loads((run / "config.json").read_text())["settings"]["half_set"] == half
        assert np.load(run / "latents.npy").shape == (rows.size, 1)
        held = read_particles(run / "particles.star")
        np.testing.assert_array_equal(held.image_indices, full.image_indices[rows])
        assert np.all(held.half_set == label)
        np.testing.assert_array_equal(half_run_rows(full, half, rows.size, run), rows)


def test_reconstruct_with_both_half_runs_writes_maps_and_report(runs):
    rec = runs / "rec"
    for name in ("flex_half_A", "flex_half_B", "rigid_half_A", "rigid_half_B", "flex_map", "rigid_map"):
        assert (rec / f"{name}.mrc").exists(), name
    assert (rec / "fsc.csv").exists()
    report = json.loads((rec / "report.json").read_text())
    assert report["independent_half_flows"] is True
    assert report["run"].endswith("run_A") and report["run_b"].endswith("run_B")
    full = read_particles(runs / "sim" / "particles.star")
    assert report["particles_used"] == {"A": int(np.sum(full.half_set == 0)), "B": int(np.sum(full.half_set == 1))}
    for mode in ("flex", "rigid"):
        assert np.isfinite(report["maps"][mode]["global"]["fsc_0143_a"])


def test_each_flex_half_map_is_solved_with_its_own_runs_flow(runs):
    """Half map A equals a direct solve with run A's flow and latents, B with run B's; and
    run A's flow applied to half B gives a different map (the runs' flows differ)."""
    from napari_flex3d.model.run import load_run

    full = read_particles(runs / "sim" / "particles.star")
    direct = {}
    for half, label in (("A", 0), ("B", 1)):
        _, _, model = load_run(runs / f"run_{half}", device="cpu")
        lat = torch.zeros(len(full), 1)
        lat[torch.as_tensor(np.flatnonzero(full.half_set == label))] = torch.as_tensor(
            np.load(runs / f"run_{half}" / "latents.npy"), dtype=torch.float32)
        out = runs / f"direct_{half}"
        events = list(solve_half_maps(model, lat, full, out, iterations=ITERATIONS, chunk=64, rigid=False))
        assert isinstance(events[-1], ReconstructFinished)
        assert events[-1].report["independent_half_flows"] is False
        direct[half] = out
    for half in ("A", "B"):
        got, want = _read(runs / "rec" / f"flex_half_{half}.mrc"), _read(direct[half] / f"flex_half_{half}.mrc")
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=half)
    # the control: half B solved with run A's flow is another map
    other, got_b = _read(direct["A"] / "flex_half_B.mrc"), _read(runs / "rec" / "flex_half_B.mrc")
    assert np.abs(other - got_b).max() > 1e-2 * np.abs(got_b).max()


def test_mismatched_runs_are_refused(runs, capsys):
    star = runs / "sim" / "particles.star"
    # run A given as both halves
    rc = main(["reconstruct", "--run", str(runs / "run_A"), "--run-b", str(runs / "run_A"), "--particles", str(star),
               "--out", str(runs / "bad1"), "--quiet"])
    assert rc == 2
    assert "--half-set B" in capsys.readouterr().err
    # particles that are not the set the halves came from (fewer rows)
    fewer = runs / "fewer.star"
    write_star(read_particles(star).subset(np.arange(150)), fewer)
    rc = main(["reconstruct", "--run", str(runs / "run_A"), "--run-b", str(runs / "run_B"), "--particles", str(fewer),
               "--out", str(runs / "bad2"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "run_A" in err and "half set A" in err
    # a half run alone, without --run-b
    rc = main(["reconstruct", "--run", str(runs / "run_A"), "--particles", str(star), "--out", str(runs / "bad3"),
               "--quiet"])
    assert rc == 2
    assert "--run-b" in capsys.readouterr().err


def test_half_set_on_unsplit_input_is_refused(runs, capsys):
    import starfile

    blocks = starfile.read(runs / "sim" / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"].drop(columns=["rlnRandomSubset"])
    unsplit = runs / "sim" / "unsplit.star"
    starfile.write(blocks, unsplit)
    assert not np.any(read_particles(unsplit).half_set >= 0)
    rc = main(["train", "--particles", str(unsplit), "--map", str(runs / "sim" / "consensus.mrc"),
               "--out", str(runs / "bad_train"), "--half-set", "A", "--epochs", "1", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unsplit.star" in err and "rlnRandomSubset" in err and "alignments3D/split" in err
