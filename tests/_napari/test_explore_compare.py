"""Other tools' latents in the explorer: matched to our particles by image name (a shuffled file
gives the same colours), their Spearman matrix and canonical correlations shown, our scatter
coloured by theirs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import starfile

pytestmark = pytest.mark.gui


def _shuffled_star(star, out, columns: dict[str, np.ndarray], seed: int):
    """``star`` with ``columns`` added (in its row order), rows shuffled; returns ``(path, perm)``."""
    data = starfile.read(star, always_dict=True)
    block = data["particles"].copy()
    for name, values in columns.items():
        block[name] = values
    perm = np.random.default_rng(seed).permutation(len(block))
    data["particles"] = block.iloc[perm].reset_index(drop=True)
    starfile.write(data, out)
    return out, perm


def _open(make_napari_viewer, qtbot, run):
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    ex = LatentExplorerWidget(make_napari_viewer())
    ex.open_run(run.run_dir)
    qtbot.waitUntil(lambda: ex.run_table is not None, timeout=60_000)
    return ex


def test_star_latents_matched_by_name_colour_our_scatter(make_napari_viewer, qtbot, artefact_run, tmp_path):
    z = artefact_run.latents.astype(np.float64)
    theirs = {"rlnDynaLatent1": np.round(-2.0 * z[:, 1], 4), "rlnDynaLatent2": np.round(3.0 * z[:, 2] + 1.0, 4)}  # linear: canonical 1
    path, perm = _shuffled_star(artefact_run.particles_star, tmp_path / "dynamight.star", theirs, seed=7)
    ex = _open(make_napari_viewer, qtbot, artefact_run)
    ex.load_comparison(f"{path}::rlnDynaLatent")
    qtbot.waitUntil(lambda: ex.comparison is not None, timeout=30_000)

    r = ex.comparison["spearman"]  # (K = 3, q = 2): ours x theirs
    assert r.shape == (3, 2)
    assert r[1, 0] == pytest.approx(-1.0, abs=1e-3) and r[2, 1] == pytest.approx(1.0, abs=1e-3)
    assert abs(r[0, 0]) < 0.3  # z0 (defocus) has nothing to do with theirs
    assert ex.comparison["matched"] == len(z)
    assert ex.comparison["canonical"][:2] == pytest.approx([1.0, 1.0], abs=0.02)
    # their axes became colour choices, in OUR row order despite the shuffled file
    assert ex.colour_by == "dynamight.star: rlnDynaLatent1"
    np.testing.assert_allclose(ex.colour_columns["dynamight.star: rlnDynaLatent2"], theirs["rlnDynaLatent2"], atol=1e-4)
    np.testing.assert_allclose(ex.colouring.values, theirs["rlnDynaLatent1"], atol=1e-4)
    assert ex.compare_table.rowCount() == 3 and ex.compare_table.columnCount() == 2
    assert ex.compare_table.item(1, 0).text() == "-1.00"
    assert "240 of our 240 particles matched" in ex.compare_label.text()


def test_zpkl_in_its_own_row_order_and_partial_matches(make_napari_viewer, qtbot, artefact_run, tmp_path):
    z = artefact_run.latents.astype(np.float64)
    star, perm = _shuffled_star(artefact_run.particles_star, tmp_path / "cryodrgn_particles.star", {}, seed=8)
    keep = perm[:200]  # cryoDRGN trained on a subset, in its own order
    data = starfile.read(star, always_dict=True)
    data["particles"] = data["particles"].iloc[:200].reset_index(drop=True)
    starfile.write(data, star)
    pkl = tmp_path / "z.pkl"
    pkl.write_bytes(pickle.dumps(np.column_stack([z[keep, 0], z[keep, 1]]).astype(np.float32)))
    ex = _open(make_napari_viewer, qtbot, artefact_run)
    ex.load_comparison(f"{pkl}::{star}")
    qtbot.waitUntil(lambda: ex.comparison is not None, timeout=30_000)
    assert ex.comparison["matched"] == 200
    values = ex.colour_columns["z.pkl: z.pkl:1"]
    matched = np.zeros(len(z), bool)
    matched[keep] = True
    np.testing.assert_allclose(values[matched], z[matched, 0], atol=1e-6)
    assert np.isnan(values[~matched]).all()  # the 40 particles cryoDRGN never saw: grey
    assert "40 particles without a value" in ex.colour_legend.text()
    np.testing.assert_allclose(np.diag(ex.comparison["spearman"][:2]), [1.0, 1.0], atol=1e-6)

    # a file whose names match none of ours says so, and leaves the last comparison in place
    other = tmp_path / "other.star"
    data["particles"]["rlnImageName"] = [f"{i + 1}@elsewhere.mrcs" for i in range(200)]
    data["particles"]["rlnOtherLatent1"] = np.arange(200.0)
    starfile.write(data, other)
    ex.load_comparison(f"{other}::rlnOtherLatent")
    qtbot.waitUntil(lambda: "not compared" in ex.compare_label.text(), timeout=30_000)  # the error notification can let finished run first
    assert "only 0 of its 200 particles match" in ex.compare_label.text()
    assert ex.comparison["matched"] == 200
