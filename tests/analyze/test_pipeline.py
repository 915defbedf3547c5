"""``flex3d analyze RUN`` end to end on a short trained run: files, subsets, outliers, the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_flex3d.analyze.compare import particle_names
from napari_flex3d.analyze.html import render_page
from napari_flex3d.cli import main
from napari_flex3d.io.particles import read_particles


@pytest.fixture(scope="module")
def analysis(trained_run, hinge_sim, tmp_path_factory):
    import starfile

    other = tmp_path_factory.mktemp("other")
    data = starfile.read(hinge_sim / "particles.star", always_dict=True)
    block = data["particles"]
    block["rlnOtherLatent1"] = np.arange(len(block), dtype=float)
    data["particles"] = block.iloc[::-1].reset_index(drop=True)  # another tool's file, rows reversed
    starfile.write(data, other / "other.star")
    from napari_flex3d.io.mrc import read_map, write_map

    consensus = read_map(hinge_sim / "consensus.mrc")
    labels = np.ones(consensus.data.shape, np.float32)  # painted regions on the consensus grid (z, y, x)
    labels[:, :, consensus.data.shape[2] // 2 :] = 2.0  # x >= 0
    write_map(other / "labels.mrc", labels, consensus.require_apix())
    out = trained_run / "analysis"
    rc = main(["analyze", str(trained_run), "--clusters", "3", "--compare", f"{other / 'other.star'}::rlnOtherLatent",
               "--labels", str(other / "labels.mrc"), "--quiet"])
    assert rc == 0
    return out, hinge_sim


def test_files_are_written(analysis):
    out, _ = analysis
    for name in ("report.html", "particles.csv", "artefacts.csv", "landscape.png", "clusters.csv", "clusters/cluster_000.mrc",
                 "clusters/cluster_000.star", "clusters/series.cxc", "outliers.txt", "particles_without_outliers.star", "displacement_z1.mrc",
                 "strain_z2.mrc", "motion.csv", "compare_other.csv", "summary.json"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "<script" not in html


def test_cluster_subset_reads_back_as_its_particles(analysis):
    out, sim = analysis
    table = pd.read_csv(out / "particles.csv")
    ps = read_particles(sim / "particles.star")
    names = particle_names(ps)
    counts = pd.read_csv(out / "clusters.csv")["particles"].tolist()
    for c in range(3):
        subset = read_particles(out / "clusters" / f"cluster_{c:03d}.star")
        members = np.flatnonzero(table["cluster"].to_numpy() == c)
        assert len(subset) == counts[c] == len(members)
        assert particle_names(subset).tolist() == names[members].tolist()
        np.testing.assert_allclose(subset.rotations, ps.rotations[members], atol=1e-5)


def test_junk_particles_are_the_outliers(analysis, junk_rows):
    out, sim = analysis
    table = pd.read_csv(out / "particles.csv")
    junk = np.zeros(len(table), bool)
    junk[junk_rows] = True
    res = table["residual"].to_numpy()
    assert 0.8 < np.median(res[~junk]) < 1.5  # the rest fit down to about the noise
    assert res[junk].min() > np.percentile(res[~junk], 95)  # the flipped ones fit worse than 95 % of the rest
    listed = set(np.loadtxt(out / "outliers.txt", dtype=int, ndmin=1).tolist())
    assert set(junk_rows.tolist()) <= listed
    kept = read_particles(out / "particles_without_outliers.star")
    assert len(kept) == len(table) - len(listed)
    assert not set(particle_names(kept)) & set(particle_names(read_particles(sim / "particles.star"))[sorted(listed)])


def test_motion_tables(analysis):
    out, _ = analysis
    motion = pd.read_csv(out / "motion.csv")
    assert motion["axis"].tolist() == ["z1", "z2"]
    assert (motion["max_displacement_a"] >= motion["mean_displacement_a"]).all() and (motion["mean_strain"] >= 0).all()
    regions = pd.read_csv(out / "regions.csv")
    assert sorted(set(regions["region"])) == [1, 2] and set(regions["axis"]) == {"z1", "z2"}


def test_comparison_matches_by_name(analysis):
    out, _ = analysis
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compare"][0]["matched"] == summary["n_particles"]
    assert summary["clusters"]["n"] == 3 and sum(summary["clusters"]["counts"]) == summary["n_particles"]


def test_report_escapes_users_text():
    page = render_page("t", [("p", "<script>alert(1)</script>"),
                             ("table", pd.DataFrame({"<img src=x onerror=alert(1)>": ["<b>"]}))])
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page


def test_api_particle_table_is_the_report_table(analysis, trained_run):
    from napari_flex3d import api

    out, _ = analysis
    table = api.particle_table(trained_run)
    saved = pd.read_csv(out / "particles.csv")
    np.testing.assert_allclose(table[["z1", "z2", "defocus_a", "view_z"]], saved[["z1", "z2", "defocus_a", "view_z"]],
                               rtol=1e-6)


def test_robust_threshold_is_where_robust_z_crosses():
    from napari_flex3d.analyze.residuals import outlier_mask, robust_threshold, robust_z

    x = np.concatenate([np.random.default_rng(0).normal(1.0, 0.1, 1000), [5.0, 6.0]])
    np.testing.assert_allclose(robust_threshold(x, 3.5), np.median(x) + 3.5 * np.median(np.abs(x - np.median(x))) / 0.6745)
    assert abs(robust_threshold(x, 0.0) - 1.0) < 0.02 and robust_threshold(x, 3.5) < 1.5  # the two outliers do not pull it
    assert robust_z(np.append(x, robust_threshold(x, 3.5)))[-1] == pytest.approx(3.5, abs=0.05)  # the same scale (one more value moves the median a little)
    assert outlier_mask(x, np.zeros_like(x)).nonzero()[0].tolist()[-2:] == [1000, 1001]



def test_printed_command_retrains_on_the_kept_particles_with_the_runs_settings(analysis, trained_run):
    """The command ``flex3d analyze`` prints, read by ``flex3d train``'s own parser, is the run's
    settings on ``particles_without_outliers.star`` in a new folder beside the run."""
    import dataclasses
    import shlex

    from napari_flex3d.cli import build_parser
    from napari_flex3d.config import TrainConfig, from_arguments
    from napari_flex3d.model.run import load_run

    out, _ = analysis
    summary = json.loads((out / "summary.json").read_text())
    argv = shlex.split(summary["outliers"]["retrain_command"])
    assert argv[:2] == ["flex3d", "train"]
    parsed = from_arguments(TrainConfig, build_parser().parse_args(argv[1:]))
    kept = (out / "particles_without_outliers.star").resolve()
    expected = dataclasses.replace(load_run(trained_run).config, particles=str(kept), max_particles=None,
                                   out=str(trained_run.resolve().parent / f"{trained_run.name}_without_outliers"),
                                   mesh=str(trained_run.resolve() / "mesh.npz"))  # the mesh it trained with
    assert parsed == expected
    assert len(read_particles(kept)) == summary["n_particles"] - summary["outliers"]["n"]
