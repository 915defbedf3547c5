"""The explorer's Analysis box: clusters of the latents, their density, and the outliers panel.

``AnalysisBox(ex)`` is a group box for ``LatentExplorerWidget`` ``ex``: it reads the
explorer's ``latents``, ``run``, ``run_dir``, ``_xy`` and ``_from_latent``, starts its workers
(and the outliers panel's) through ``ex.background`` (so ``ex.idle`` sees them), draws its own
pyqtgraph items on ``ex.plot`` (numbered cluster centres, a density image with contours)
and selects through ``ex.set_selection``. Two tabs, Clusters and Outliers, keep it short. Clustering is ``analyze.landscape.cluster_latents``
(k-means, or a Gaussian mixture whose size the BIC picks), the maps and subsets are
``analyze.pipeline.write_clusters``, the same code as ``flex3d analyze``; all of it runs in
workers. The outliers (residual and latent-norm histograms with draggable thresholds,
exclude and train) are ``._explore_outliers.OutlierPanel``, placed in this box. A third tab
writes the whole ``flex3d analyze`` report (``write_report``) and its command.

State: ``clustering`` (an ``analyze.landscape.Clustering`` of ``ex.latents`` or ``None``),
``inputs`` (``(TrainConfig, ParticleSet)`` of the open run, read once, in a worker),
``clusters_written``. Actions: ``cluster(n)``, ``choose_cluster(i)``,
``export_clusters(folder)``, ``write_report(out_dir)``, ``show_density``. Imports Qt, pyqtgraph, napari's
notifications and ``._workers``; ``analyze`` (scikit-learn, torch) only inside workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QLabel,
    QListWidget,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ._command import CommandButton
from ._explore_outliers import OutlierPanel
from ._explore_plot import hbox_row
from ._plots import PALETTE
from ._workers import LatestOnly

CLUSTER_CHOICES = ["auto (BIC)"] + [str(c) for c in range(2, 9)]  # the mixture's BIC picks among 1..8
CONTOUR_LEVELS = (0.25, 0.5, 0.75)  # contours at these fractions of the peak log density


class _Message(QObject):
    """Carries a worker's progress line to the GUI thread (a queued signal)."""

    text = Signal(str)


def report_command(run_dir, out_dir, clusters="auto") -> list[str]:
    """``flex3d analyze RUN --out OUT [--clusters N]``: the Report tab's job as a command line, its
    paths absolute (the run's own particle file, the defaults of ``flex3d analyze`` otherwise)."""
    from ..config import command_line

    absolute = lambda p: str(Path(p).expanduser().resolve())  # noqa: E731
    return command_line("analyze", absolute(run_dir), out=absolute(out_dir),
                        clusters=None if clusters == "auto" else int(clusters), device="cpu")


def run_inputs(config, n_latents: int, moved_to: str = ""):
    """Worker: ``(config, ParticleSet)`` of a run trained with ``config`` (its ``TrainConfig``),
    the particles it trained on (its settings' file cut to its half set and limit, as
    ``flex3d analyze`` reads them), one per latent row. ``moved_to``: the same particles' file
    elsewhere (the Data widget's), read when the run's own file cannot be (a moved project)."""
    from ..analyze.pipeline import read_run_particles

    try:
        ps, path = read_run_particles(config)
    except (OSError, ValueError):
        if not moved_to or moved_to == config.particles:
            raise
        ps, path = read_run_particles(config, moved_to)
    if len(ps) != n_latents:
        raise ValueError(f"{path}: {len(ps)} particles but the run has {n_latents} latents")
    return config, ps


def _cluster_job(latents, n_clusters):
    from ..analyze.landscape import cluster_latents

    return cluster_latents(latents, n_clusters)


def density_bins(n: int) -> int:
    """Bins per axis of the density image: ~2 sqrt(n), 16 to 80 (sparse latents still show a landscape)."""
    return int(np.clip(2 * np.sqrt(n), 16, 80))


def _density_job(xy):
    from ..analyze.landscape import log_density

    return log_density(xy, bins=density_bins(len(xy)))


class AnalysisBox(QGroupBox):
    """Clusters (centres drawn on the scatter, listed with their counts), a density view, outliers."""

    def __init__(self, ex):
        super().__init__("Analysis")
        self.ex = ex
        ex.analysis = self
        self.clustering = None
        self.inputs = None
        self.clusters_written = None  # (map paths, script, subset paths) of the last export
        self.worker = None
        self._clustered = None  # the latents array ``clustering`` belongs to
        self._inputs_for = None  # the run folder ``inputs`` belongs to
        self._drawn = (None, None)  # (view map, clustering) the centres were drawn for
        self._density_for = None  # the plot coordinates the density image shows
        self._density = LatestOnly(_density_job, self._on_density)
        self.tabs = QTabWidget()  # one page at a time: the explorer is docked beside the canvas
        QVBoxLayout(self).addWidget(self.tabs)
        page = QWidget()
        layout = QVBoxLayout(page)
        self.clusters_combo = QComboBox()
        self.clusters_combo.addItems(CLUSTER_CHOICES)
        self.clusters_combo.setToolTip("auto: a Gaussian mixture whose size (1-8) the BIC picks; a number: k-means")
        self.cluster_btn = QPushButton("Cluster")
        self.cluster_btn.clicked.connect(lambda: self.cluster())
        self.density_check = QCheckBox("density")
        self.density_check.setToolTip("log density of the plotted points, with contours at 1/4, 1/2, 3/4 of its peak")
        self.density_check.toggled.connect(lambda _: self._sync_view())
        layout.addWidget(hbox_row(QLabel("clusters"), self.clusters_combo, self.cluster_btn, self.density_check))
        self.cluster_list = QListWidget()
        self.cluster_list.setMaximumHeight(120)
        self.cluster_list.setToolTip("choose a cluster: its particles are selected and its centre's map is shown")
        self.cluster_list.currentRowChanged.connect(self.choose_cluster)
        layout.addWidget(self.cluster_list)
        self.export_btn = QPushButton("Export clusters…")
        self.export_btn.setToolTip("the centres' maps (MRC, with a ChimeraX series script) and each cluster's "
                                   "particles (STAR, and .cs for a .cs input) into a folder")
        self.export_btn.clicked.connect(self._export_dialog)
        layout.addWidget(self.export_btn)
        self.cluster_label = QLabel("")
        self.cluster_label.setWordWrap(True)
        layout.addWidget(self.cluster_label)
        layout.addStretch(1)
        self.tabs.addTab(page, "Clusters")
        self.outliers = OutlierPanel(self)
        self.tabs.addTab(self.outliers, "Outliers")
        self.tabs.addTab(self._build_report_page(), "Report")
        self._build_overlays()
        ex.plot.highlight.sigPlotChanged.connect(lambda *_: self._sync_view())  # every redraw and selection
        self._sync_view()

    def _build_overlays(self) -> None:
        plot = self.ex.plot
        self.density_item = pg.ImageItem()
        self.density_item.setColorMap(pg.colormap.get("magma"))
        self.density_item.setOpacity(0.8)
        self.density_item.setZValue(-5)  # under the points, over the explorer's own density
        self.contours = [pg.IsocurveItem(pen=pg.mkPen("w", width=1)) for _ in CONTOUR_LEVELS]
        for c in self.contours:
            c.setParentItem(self.density_item)  # drawn in the image's pixel coordinates
        self.centre_item = pg.ScatterPlotItem(size=16, pen=pg.mkPen("w", width=2), brush=pg.mkBrush(0, 0, 0, 160))
        self.centre_item.setZValue(20)
        self.centre_labels: list[pg.TextItem] = []
        plot.addItem(self.density_item)
        plot.addItem(self.centre_item)
        self.density_item.hide()

    # ------------------------------------------------------------------ state
    @property
    def n_clusters(self):
        """"auto" or the number of clusters asked for (the combo box)."""
        text = self.clusters_combo.currentText()
        return "auto" if text.startswith("auto") else int(text)

    @n_clusters.setter
    def n_clusters(self, value) -> None:
        self.clusters_combo.setCurrentIndex(0 if value == "auto" else CLUSTER_CHOICES.index(str(int(value))))

    show_density = property(lambda self: self.density_check.isChecked(),
                            lambda self, v: self.density_check.setChecked(bool(v)))

    @property
    def idle(self) -> bool:
        return self.worker is None and self._density.idle and self.outliers.idle

    def members(self, i: int) -> np.ndarray:
        """Indices of the particles in cluster ``i``."""
        return np.flatnonzero(self.clustering.labels == i)

    def _sync_view(self) -> None:
        """After a redraw: forget results of other latents (a new run), move the overlays to the view."""
        ex = self.ex
        if self._clustered is not None and self._clustered is not ex.latents:
            self._set_clustering(None, None)
        if self._inputs_for is not None and self._inputs_for != ex.run_dir:
            self.inputs, self._inputs_for = None, None
        self.outliers.sync_latents()
        k = 0 if ex.latents is None else ex.latents.shape[1]
        self.density_check.setEnabled(k >= 2)  # K = 1 is a line: no density image
        if self._drawn != (ex._from_latent, self.clustering):
            self._draw_centres()
        if not (self.show_density and k >= 2 and ex._xy is not None):
            self.density_item.hide()
            self._density_for = None
        elif self._density_for is not ex._xy:
            self._density_for = ex._xy
            self._density.request(np.asarray(ex._xy))

    # ------------------------------------------------------------------ report
    def _build_report_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        text = QLabel("The whole analysis into RUN/analysis, as flex3d analyze writes it (plots, tables, "
                      "report.html), with the clusters setting of the Clusters tab.")
        text.setWordWrap(True)
        layout.addWidget(text)
        self.report_btn = QPushButton("Write report")
        self.report_btn.setToolTip("flex3d analyze of the open run into RUN/analysis")
        self.report_btn.clicked.connect(self._report_clicked)
        self.report_command_btn = CommandButton()
        layout.addWidget(hbox_row(self.report_btn, self.report_command_btn))
        self.report_label = QLabel("")
        self.report_label.setWordWrap(True)
        layout.addWidget(self.report_label)
        layout.addStretch(1)
        self._report_message = _Message()
        self._report_message.text.connect(lambda line: self.report_label.setText(f"analysing: {line}…"))
        self.report_summary = None
        return page

    def write_report(self, out_dir=None) -> None:
        """``flex3d analyze`` of the open run into ``out_dir`` (default ``RUN/analysis``) in a worker;
        its command goes into the folder (``flex3d_command.sh``) and onto "Copy command"."""
        from ..io.atomic import COMMAND_FILE, write_command

        ex = self.ex
        if ex.run is None:
            raise ValueError("open a trained run first")
        if not self.report_btn.isEnabled():
            return  # one report at a time
        out = Path(out_dir) if out_dir else Path(ex.run_dir) / "analysis"
        argv = report_command(ex.run_dir, out, self.n_clusters)
        path = write_command(out / COMMAND_FILE, argv, "the analysis started from the Latent explorer")
        self.report_command_btn.set_command(argv, path)
        run_dir, clusters, say = ex.run_dir, self.n_clusters, self._report_message.text.emit

        def job():
            from ..analyze.pipeline import analyze_run

            return analyze_run(run_dir, out, clusters=clusters, device="cpu", progress=say)

        def done(summary):
            self.report_summary = summary
            self.report_label.setText(f"wrote {out / 'report.html'} ({summary['timings_s']['total']:.0f} s)")

        self.report_btn.setEnabled(False)
        self.report_label.setText("analysing…")
        ex.background.start(job, returned=done, errored=lambda exc: self.report_label.setText(f"failed: {exc}"),
                            finished=lambda: self.report_btn.setEnabled(True))

    def _report_clicked(self) -> None:
        try:
            self.write_report()
        except (ValueError, OSError) as exc:
            show_error(f"napari-flex3d: {exc}")

    # ------------------------------------------------------------------ inputs
    def with_inputs(self, then) -> None:
        """Call ``then(config, particles)`` with the open run's inputs, read in a worker the first time."""
        ex = self.ex
        if ex.run is None:
            raise ValueError("open a trained run first")
        if self.inputs is not None and self._inputs_for == ex.run_dir:
            then(*self.inputs)
            return

        before, reading = self.cluster_label.text(), "reading the run's particles…"

        def done(result):
            self.inputs, self._inputs_for = result, ex.run_dir
            if self.cluster_label.text() == reading:
                self.cluster_label.setText(before)
            then(*result)

        self.cluster_label.setText(reading)
        ex.background.start(run_inputs, ex.run.config, len(ex.latents), ex.session.particles_path, returned=done,
                            errored=lambda exc: self.cluster_label.setText(f"cannot read the run's particles: {exc}"))

    # ------------------------------------------------------------------ clusters
    def cluster(self, n_clusters=None) -> None:
        """Cluster the latents in a worker ("auto" or a count; default the combo box's choice)."""
        ex = self.ex
        if ex.latents is None:
            show_error("napari-flex3d: open a trained run first")
            return
        if n_clusters is not None:
            self.n_clusters = n_clusters
        latents = ex.latents
        self.cluster_label.setText("clustering…")
        self.worker = self.ex.background.start(_cluster_job, latents, self.n_clusters,
                                               returned=lambda result: self._set_clustering(result, latents),
                                               finished=lambda: setattr(self, "worker", None))

    def _set_clustering(self, result, latents) -> None:
        if latents is not None and latents is not self.ex.latents:
            return  # a run opened while it clustered
        self.clustering, self._clustered = result, latents
        self.cluster_list.blockSignals(True)
        self.cluster_list.clear()
        if result is not None:
            counts = result.counts
            self.cluster_list.addItems([f"cluster {i}: {c:,} particles" for i, c in enumerate(counts)])
            how = (f"Gaussian mixture; the BIC chose {len(counts)} of 1-{np.isfinite(result.bic).sum()}"
                   if result.method == "gmm" else f"k-means, {len(counts)} clusters")
            self.cluster_label.setText(f"{how}. Choose one to select its particles and see its centre.")
        else:
            self.cluster_label.setText("")
        self.cluster_list.blockSignals(False)
        self._draw_centres()

    def _draw_centres(self) -> None:
        plot = self.ex.plot
        self._drawn = (self.ex._from_latent, self.clustering)
        for label in self.centre_labels:
            plot.removeItem(label)
        self.centre_labels = []
        if self.clustering is None or self.ex._from_latent is None:
            self.centre_item.clear()
            return
        xy = np.asarray(self.ex._from_latent(self.clustering.centres), float)  # (c, 2) plot coordinates
        brushes = [pg.mkBrush(PALETTE[i % len(PALETTE)]) for i in range(len(xy))]
        self.centre_item.setData(pos=xy, brush=brushes)
        for i, (x, y) in enumerate(xy):
            label = pg.TextItem(str(i), color="w", anchor=(-0.3, 1.1))
            label.setPos(float(x), float(y))
            label.setZValue(21)
            plot.addItem(label)
            self.centre_labels.append(label)

    def choose_cluster(self, i: int) -> np.ndarray | None:
        """Select cluster ``i``'s particles (``ex.set_selection(..., "cluster i")``) and show the
        convected map at its centre; returns the indices."""
        if self.clustering is None or not 0 <= i < len(self.clustering.centres):
            return None
        if self.cluster_list.currentRow() != i:
            self.cluster_list.blockSignals(True)
            self.cluster_list.setCurrentRow(i)
            self.cluster_list.blockSignals(False)
        idx = self.ex.set_selection(self.members(i), f"cluster {i}")
        self.ex.show_latent(self.clustering.centres[i].astype(np.float32))
        return idx

    def export_clusters(self, folder) -> None:
        """In a worker: each centre's map (``cluster_NNN.mrc``, ``series.cxc``) and each cluster's
        particles (``cluster_NNN.star``, ``.cs`` too for a ``.cs`` input) into ``folder``."""
        if self.clustering is None:
            raise ValueError("cluster the latents first")
        run, result, folder = self.ex.run, self.clustering, Path(folder)

        def write(config, ps):
            def job():
                from ..analyze.pipeline import write_clusters

                return write_clusters(run, ps, result.centres, result.labels, folder)

            def done(written):
                self.clusters_written = written
                self.cluster_label.setText(f"wrote {len(written[0])} maps and {len(written[2])} particle files "
                                           f"to {folder}")
                show_info(f"napari-flex3d: wrote the clusters to {folder}")

            self.cluster_label.setText(f"writing {len(result.centres)} maps and subsets…")
            self.worker = self.ex.background.start(job, returned=done, finished=lambda: setattr(self, "worker", None))

        self.with_inputs(write)

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the cluster maps and subsets")
        if folder:
            try:
                self.export_clusters(folder)
            except ValueError as exc:
                show_error(f"napari-flex3d: {exc}")

    # ------------------------------------------------------------------ density
    def _on_density(self, result) -> None:
        image, xe, ye = result  # (bins y, bins x) log10(1 + counts)
        if not self.show_density:
            return
        data = np.ascontiguousarray(image.T)  # pyqtgraph indexes images [x, y]
        self.density_item.setImage(data, autoLevels=True)
        self.density_item.setRect(pg.QtCore.QRectF(xe[0], ye[0], xe[-1] - xe[0], ye[-1] - ye[0]))
        peak = float(data.max()) or 1.0
        for contour, level in zip(self.contours, CONTOUR_LEVELS):
            contour.setData(data, level * peak)
        self.density_item.show()
