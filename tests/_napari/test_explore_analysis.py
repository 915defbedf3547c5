"""GUI: the explorer's Analysis box on a tiny trained run of the sample data.

Clusters: a cluster's STAR subset reads back as its particles, its centre is drawn where the
view puts it. Outliers: moving a threshold selects exactly the particles above it (and the
drag is throttled); exclude and train starts a run on the n - outliers others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

N = 96  # particles the tiny run trains on (the sample's first 96)


@pytest.fixture(scope="module")
def tiny_run(sample, tmp_path_factory) -> Path:
    """A K=2 run of one short epoch on the sample's first :data:`N` particles."""
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.loop import train_run

    out = tmp_path_factory.mktemp("analysis_run")
    config = TrainConfig(
        particles=str(sample.particles_star), map=str(sample.consensus), out=str(out), latent_dim=2, hidden=16,
        layers=2, epochs=1, batch=32, max_particles=N, kernel="linear", latent_grid=5, latent_steps=1,
        warmup_epochs=0, preview_every=0, val_fraction=0.1, threads=1,
    )
    for _ in train_run(config, out):
        pass
    return out


@pytest.fixture
def explorer(make_napari_viewer, tiny_run):
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    ex = LatentExplorerWidget(make_napari_viewer())
    ex.preview_box = 16
    ex.open_run(tiny_run)
    return ex


def _run_particles(run_dir):
    from napari_flex3d.analyze.pipeline import read_run_particles
    from napari_flex3d.model.run import load_run

    return read_run_particles(load_run(run_dir).config)[0]


def test_clusters_are_drawn_listed_selected_and_exported(explorer, qtbot, tiny_run, tmp_path):
    from napari_flex3d.analyze.compare import particle_names
    from napari_flex3d.io.mrc import read_map
    from napari_flex3d.io.particles import read_particles

    ex, box = explorer, explorer.analysis
    box.cluster(3)
    qtbot.waitUntil(lambda: box.clustering is not None and box.idle, timeout=60_000)
    labels = box.clustering.labels
    assert box.clustering.method == "kmeans" and len(box.clustering.centres) == 3 and len(labels) == N
    assert box.cluster_list.count() == 3
    assert box.cluster_list.item(1).text() == f"cluster 1: {int((labels == 1).sum())} particles"
    # the numbered centres sit where the view puts the centres' latents, and follow a change of view
    np.testing.assert_allclose(np.column_stack(box.centre_item.getData()), ex._from_latent(box.clustering.centres),
                               rtol=1e-5)
    assert [t.toPlainText() for t in box.centre_labels] == ["0", "1", "2"]
    ex.axes = (1, 0)
    np.testing.assert_allclose(np.column_stack(box.centre_item.getData()), box.clustering.centres[:, [1, 0]], rtol=1e-5)

    # choosing a cluster selects its particles and renders its centre
    box.cluster_list.setCurrentRow(1)
    members = np.flatnonzero(labels == 1)
    np.testing.assert_array_equal(ex.selection, members)
    assert ex.status_label.text() == f"{len(members)} particles selected by cluster 1"
    np.testing.assert_allclose(ex.z, box.clustering.centres[1], rtol=1e-6)
    qtbot.waitUntil(lambda: ex.volumes_shown >= 1, timeout=30_000)

    # export: the centres' maps and each cluster's STAR subset, which reads back as its particles
    box.export_clusters(tmp_path / "clusters")
    qtbot.waitUntil(lambda: box.clusters_written is not None and box.idle, timeout=60_000)
    maps, script, subsets = box.clusters_written
    assert len(maps) == 3 and script.name == "series.cxc"
    assert read_map(maps[1]).data.shape == (ex.run.box,) * 3
    ps = _run_particles(tiny_run)
    for c in range(3):
        sub = read_particles(tmp_path / "clusters" / f"cluster_{c:03d}.star")
        rows = np.flatnonzero(labels == c)
        assert particle_names(sub).tolist() == particle_names(ps)[rows].tolist()
        np.testing.assert_allclose(sub.rotations, ps.rotations[rows], atol=1e-5)

    # the density view with contours, on the plotted axes
    box.show_density = True
    qtbot.waitUntil(lambda: box.density_item.isVisible() and box.idle, timeout=30_000)
    from napari_flex3d._napari._explore_analysis import density_bins
    from napari_flex3d.analyze.landscape import log_density

    assert box.density_item.image.shape == (density_bins(N),) * 2 == (19, 19)
    np.testing.assert_allclose(box.density_item.image, log_density(ex._xy, bins=19)[0].T, rtol=1e-6)
    for contour in box.contours:
        contour.generatePath()  # else made when first painted
    assert all(contour.path.elementCount() > 4 for contour in box.contours)  # three closed contour lines
    box.show_density = False
    assert not box.density_item.isVisible()


def test_moving_a_threshold_selects_exactly_the_particles_above_it(explorer, qtbot):
    ex, panel = explorer, explorer.analysis.outliers
    qtbot.waitUntil(lambda: panel.latent_norm is not None, timeout=30_000)
    np.testing.assert_allclose(panel.latent_norm, np.linalg.norm(ex.latents.astype(np.float64), axis=1))
    panel.compute_residuals()
    qtbot.waitUntil(lambda: panel.residual is not None and panel.idle, timeout=120_000)
    res = panel.residual
    assert res.shape == (N,) and np.all(np.isfinite(res)) and np.all(res > 0)
    assert panel.progress.value() == panel.progress.maximum() == N
    x, counts = panel.residual_plot.bars.getData()
    assert counts.sum() == N  # the histogram holds every particle

    emitted = []
    ex.selection_changed.connect(emitted.append)
    panel.norm_threshold = panel.latent_norm.max() + 1.0  # the norm line out of the way
    for t in np.linspace(np.percentile(res, 20), np.percentile(res, 80), 12):  # a drag: many moves at once
        panel.residual_threshold = float(t)
    qtbot.waitUntil(lambda: panel.idle and len(emitted) >= 1, timeout=5_000)
    assert len(emitted) == 1  # throttled: one selection for the whole drag
    np.testing.assert_array_equal(ex.selection, np.flatnonzero(res > t))
    assert ex.status_label.text().endswith(f"by residual > {t:.3g} or |z| > {panel.norm_threshold:.3g}")
    np.testing.assert_array_equal(ex.plot.highlight.getData()[0], ex._xy[ex.selection, 0])  # marked on the scatter

    # both lines: the particles above either
    tn = float(np.median(panel.latent_norm))
    panel.norm_threshold = tn
    qtbot.waitUntil(lambda: panel.idle and len(emitted) == 2, timeout=5_000)
    np.testing.assert_array_equal(ex.selection, np.flatnonzero((res > t) | (panel.latent_norm > tn)))


def test_exclude_and_train_starts_a_run_on_the_kept_particles(explorer, qtbot, tiny_run, tmp_path):
    from napari_flex3d._napari._train_widget import TrainWidget
    from napari_flex3d.analyze.compare import particle_names
    from napari_flex3d.io.particles import read_particles

    ex, panel = explorer, explorer.analysis.outliers
    train = panel._train_widget()  # none open: one is docked on the viewer
    assert isinstance(train, TrainWidget) and train.session is ex.session
    assert panel._train_widget() is train  # and found, not docked again
    panel.compute_residuals()
    qtbot.waitUntil(lambda: panel.residual is not None and panel.latent_norm is not None and panel.idle,
                    timeout=120_000)
    panel.norm_threshold = panel.latent_norm.max() + 1.0
    panel.residual_threshold = float(np.sort(panel.residual)[-8])  # the 7 worst are outliers
    outliers = panel.outliers
    assert outliers.sum() == 7

    panel.exclude_and_train(tmp_path / "retrain")
    qtbot.waitUntil(lambda: panel.retrain is not None, timeout=60_000)
    qtbot.waitUntil(lambda: any(type(e).__name__ == "RunStarted" for e in train.events) or not train.running,
                    timeout=120_000)
    started = [e for e in train.events if type(e).__name__ == "RunStarted"]
    assert started, train.status_label.text()
    assert started[0].n_train + started[0].n_val == N - 7
    train.stop()
    qtbot.waitUntil(lambda: train.state == "idle", timeout=120_000)

    kept_path = tmp_path / "retrain" / "particles_without_outliers.star"
    assert panel.retrain == (train, kept_path)
    kept = read_particles(kept_path)
    names = particle_names(_run_particles(tiny_run))
    assert particle_names(kept).tolist() == names[~outliers].tolist()
    cfg = train.config
    assert cfg.particles == str(kept_path) and cfg.out == str(tmp_path / "retrain") and cfg.max_particles is None
    assert cfg.latent_dim == 2 and cfg.hidden == 16  # the run's own settings
    assert ex.session.map_path == cfg.map  # the run's map and the mesh it trained with
    from napari_flex3d.mesh.mesh import load_mesh

    old, new = load_mesh(tiny_run / "mesh.npz"), load_mesh(tmp_path / "retrain" / "mesh.npz")
    np.testing.assert_array_equal(new.vertices_a, old.vertices_a)
    np.testing.assert_array_equal(new.cells, old.cells)
    assert "--particles=" in panel.outlier_label.text() and str(kept_path) in panel.outlier_label.text()


def test_centres_follow_the_pca_view_and_one_axis_has_no_density(make_napari_viewer, qtbot):
    """Latents alone (no run): for K = 3 the centres are drawn in the PCA plane the scatter shows;
    for K = 1 the density view is off (a line has no 2D density) and the centres sit on it."""
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    ex = LatentExplorerWidget(make_napari_viewer())
    box = ex.analysis
    rng = np.random.default_rng(1)
    z = np.concatenate([rng.normal(-2.0, 0.3, (150, 3)), rng.normal(2.0, 0.3, (150, 3))]).astype(np.float32)
    ex.set_latents(z)
    ex.use_pca = True
    box.cluster(2)
    qtbot.waitUntil(lambda: box.clustering is not None and box.idle, timeout=60_000)
    centres = box.clustering.centres
    np.testing.assert_allclose(np.column_stack(box.centre_item.getData()), ex._from_latent(centres), rtol=1e-5)
    assert sorted(box.clustering.counts.tolist()) == [150, 150]
    pc1 = np.linalg.svd(z - z.mean(0), full_matrices=False)[2][0]  # the two blobs lie along PC1
    assert abs(float((centres[1] - centres[0]) @ pc1)) > 5.0

    ex.set_latents(z[:, :1])
    assert box.clustering is None and box.cluster_list.count() == 0  # other latents: the clusters are gone
    assert not box.density_check.isEnabled()
    box.cluster(2)
    qtbot.waitUntil(lambda: box.clustering is not None and box.idle, timeout=60_000)
    x, y = box.centre_item.getData()
    np.testing.assert_allclose(x, box.clustering.centres[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(y, 0.0)


def test_idle_waits_for_every_worker_of_the_explorer_and_its_boxes(make_napari_viewer, qtbot, tiny_run, sample,
                                                                  monkeypatch):
    """``ex.idle`` (what tests and benchmarks wait on) stays false while any one job the explorer
    or its boxes started is held back in its worker (the others of the action finished), and
    turns true once it is let go."""
    import inspect
    import threading

    from napari_flex3d._napari import _workers
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    gate, held, started, others = threading.Event(), set(), set(), [0]
    real = _workers.create_worker

    def holding(func, *args, **kwargs):  # every worker starts here; the job named in `held` waits for the gate
        name = getattr(func, "__name__", "")

        def wait():
            started.add(name)
            if name in held:
                gate.wait(60)

        if inspect.isgeneratorfunction(func):
            def job(*a, **k):
                wait()
                yield from func(*a, **k)
        else:
            def job(*a, **k):
                wait()
                return func(*a, **k)
        worker = real(job, *args, **kwargs)
        if name not in held:
            others[0] += 1
            worker.finished.connect(lambda: others.__setitem__(0, others[0] - 1))
        return worker

    monkeypatch.setattr(_workers, "create_worker", holding)
    ex = LatentExplorerWidget(make_napari_viewer())
    ex.preview_box = 16

    def check(job: str, action) -> None:
        held.clear()
        held.add(job)
        started.clear()
        gate.clear()
        action()
        qtbot.waitUntil(lambda: job in started and others[0] == 0, timeout=60_000)
        qtbot.wait(200)  # the other jobs' finished signals delivered
        assert not ex.idle, f"ex.idle while {job} runs"
        gate.set()
        qtbot.waitUntil(lambda: ex.idle, timeout=60_000)

    check("read_particle_table", lambda: ex.open_run(tiny_run))  # the colour table
    check("_norms_job", lambda: ex.open_run(tiny_run))  # the outliers' latent norms
    assert ex.run_table is not None and ex.analysis.outliers.latent_norm is not None
    check("_compute_volume", lambda: ex.show_latent(ex.latents[0]))  # the preview
    check("run_residuals", ex.compute_residual)
    check("compare_source", lambda: ex.load_comparison(f"{sample.particles_star}::rlnDefocusU"))
    assert ex.comparison is not None and ex.comparison["matched"] == N
    check("_cluster_job", lambda: ex.analysis.cluster(2))
    check("run_inputs", lambda: ex.analysis.with_inputs(lambda config, ps: None))
    assert ex.analysis.inputs is not None


def test_the_report_tab_runs_flex3d_analyze_and_writes_its_command(explorer, qtbot, tiny_run, tmp_path,
                                                                  monkeypatch):
    """The Report tab's job writes its ``flex3d analyze`` command, and that command, run as
    written, calls the analysis with the same arguments (``analyze_run`` is recorded, not run:
    the pipeline's own tests check what it writes)."""
    import inspect
    import shlex
    from pathlib import Path

    from napari_flex3d.analyze import pipeline
    from napari_flex3d.cli import main
    from napari_flex3d.io.atomic import COMMAND_FILE

    calls = []
    signature = inspect.signature(pipeline.analyze_run)

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        called = dict(bound.arguments, progress=None)
        calls.append({k: str(Path(v).resolve()) if k in ("run_dir", "out_dir") else v for k, v in called.items()})
        return {"timings_s": {"total": 0.0}, "artefacts": [], "clusters": {"n": 2}, "outliers": {"n": 0}}

    monkeypatch.setattr(pipeline, "analyze_run", record)
    box = explorer.analysis
    box.n_clusters = 2
    box.write_report(tmp_path / "gui")
    qtbot.waitUntil(lambda: box.report_summary is not None and explorer.idle, timeout=60_000)
    argv = shlex.split((tmp_path / "gui" / COMMAND_FILE).read_text().strip().splitlines()[-1])
    assert argv[:3] == ["flex3d", "analyze", str(tiny_run.resolve())] and "--clusters=2" in argv
    assert box.report_command_btn.command == shlex.join(argv)
    assert main(argv[1:] + ["--quiet"]) == 0
    assert len(calls) == 2 and calls[0] == calls[1]
    assert calls[0]["clusters"] == 2 and calls[0]["out_dir"] == str((tmp_path / "gui").resolve())
