"""The explorer's "Colour by" box: colour the latent scatter by any per-particle value.

``ExplorerColour`` is the part of ``LatentExplorerWidget`` that reads the open run's
particle table (``analyze.run_table.run_particle_table``, in a worker: it reads the
particle file), offers its columns (defocus, Euler angles, viewing direction, optics
group, half set, shifts, the residual, the input file's numeric columns, other tools'
latents added by the Compare box) and draws the colour bar and its range, or a legend,
and the pose/defocus artefact flags ``flex3d analyze`` reports. Colours themselves are
``_colouring``'s. Imports Qt and this package's napari helpers.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QGroupBox, QLabel, QPushButton, QVBoxLayout

from ._colouring import Colouring, colouring_for
from ._explore_plot import hbox_row

NONE = "(one colour)"
VIEW = "viewing direction"
TABLE_COLUMNS = ("latent_norm", "defocus_a", "astigmatism_a", "rot_deg", "tilt_deg", "psi_deg", VIEW, "view_x",
                 "view_y", "view_z", "shift_x_a", "shift_y_a", "optics_group", "half_set", "residual")
# the columns behind each nuisance of analyze.covariates.pose_covariates
NUISANCE_OF = {"defocus_a": "defocus_a", "astigmatism_a": "astigmatism_a", "rot_deg": "rot", "psi_deg": "psi",
               "tilt_deg": "tilt", "view_x": "view_x", "view_y": "view_y", "view_z": "view_z", VIEW: "view_"}


def colour_columns_of(table, latents: np.ndarray) -> dict[str, np.ndarray]:
    """Colour choices from a particle table: the latent axes (the explorer's names z0, z1, ...),
    the table's columns in :data:`TABLE_COLUMNS` order (the viewing direction as one ``(n, 3)``
    choice besides its components) and the input file's numeric columns that vary."""
    cols = {f"z{i}": latents[:, i].astype(np.float64) for i in range(latents.shape[1])}
    if table is None:
        cols["latent_norm"] = np.linalg.norm(latents.astype(np.float64), axis=1)
        return cols
    for name in TABLE_COLUMNS:
        if name == VIEW:
            cols[VIEW] = table[["view_x", "view_y", "view_z"]].to_numpy(np.float64)
        elif name in table:
            cols[name] = table[name].to_numpy(np.float64)
    for name in table.columns:
        if name.startswith("file:") and table[name].nunique() > 1:
            cols[name] = table[name].to_numpy(np.float64)
    return cols


def read_particle_table(run_dir, config, latents):
    """Worker: ``analyze.run_table.run_particle_table``, its module imported here (pandas,
    scipy: 0.4 s on the GUI thread once, measured when a run is opened)."""
    from ..analyze.run_table import run_particle_table

    return run_particle_table(run_dir, config, latents)


def _bar_pixmap(palette: np.ndarray, width: int = 220, height: int = 12) -> QPixmap:
    """A horizontal colour bar of ``palette (m, 4)`` (the last, missing-value colour left out)."""
    pal = palette[:-1]
    idx = np.minimum((np.arange(width) * len(pal)) // width, len(pal) - 1)
    rgba = np.ascontiguousarray(np.broadcast_to(pal[idx][None, :, :], (height, width, 4)))
    image = QImage(rgba.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(image.copy())


class ExplorerColour:
    """Mixin of ``LatentExplorerWidget``: the colour-by choice, its colour bar or legend, the flags.

    State: ``colour_columns`` (name -> ``(n,)`` or ``(n, 3)`` values), ``colouring`` (the
    ``Colouring`` drawn, or ``None``), ``particle_table`` (a DataFrame once read),
    ``artefacts`` (``analyze.covariates.pose_artefacts``), ``run_table``. Its workers (the
    table, the residual) start through the host's ``background`` (``._workers.Background``).
    """

    def _init_colour(self) -> None:
        self.colour_columns: dict[str, np.ndarray] = {}
        self.colouring: Colouring | None = None
        self.particle_table = None
        self.artefacts = None
        self.run_table = None
        self.table_worker = None
        self.residual_worker = None
        self._residual_done = (0, 0)
        self._residual_timer = QTimer()
        self._residual_timer.setInterval(250)
        self._residual_timer.timeout.connect(self._show_residual_progress)

    def _build_colour_box(self) -> QGroupBox:
        box = QGroupBox("Colour by")
        vl = QVBoxLayout(box)
        self.colour_combo = QComboBox()
        self.colour_combo.setMinimumContentsLength(28)  # "dynamight.star: rlnDynaLatent1" whole
        self.colour_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.colour_combo.addItem(NONE)
        self.colour_combo.currentTextChanged.connect(self._colour_chosen)
        self.colour_flag = QLabel("")
        self.colour_flag.setStyleSheet("color: #ffb74d")
        vl.addWidget(hbox_row(self.colour_combo, self.colour_flag))
        self.colour_bar = QLabel()
        self.colour_lo, self.colour_hi = QDoubleSpinBox(), QDoubleSpinBox()
        for spin in (self.colour_lo, self.colour_hi):
            spin.setRange(-1e12, 1e12)
            spin.setDecimals(4)
            spin.setKeyboardTracking(False)
            spin.setMaximumWidth(100)
            spin.valueChanged.connect(self._range_edited)
        self.colour_range_row = hbox_row(self.colour_lo, self.colour_bar, self.colour_hi)
        vl.addWidget(self.colour_range_row)
        self.colour_legend = QLabel("")
        self.colour_legend.setWordWrap(True)
        vl.addWidget(self.colour_legend)
        self.artefact_label = QLabel("")
        self.artefact_label.setWordWrap(True)
        vl.addWidget(self.artefact_label)
        self.residual_btn = QPushButton("Compute residual")
        self.residual_btn.setToolTip("per-particle whitened residual (1 = only noise), as flex3d analyze; runs in the background")
        self.residual_btn.clicked.connect(self.compute_residual)
        self.residual_btn.setEnabled(False)
        self.colour_status = QLabel("")
        self.colour_status.setWordWrap(True)
        vl.addWidget(hbox_row(self.residual_btn, self.colour_status))
        self.colour_range_row.setEnabled(False)
        return box

    # ------------------------------------------------------------------ state
    @property
    def colour_by(self) -> str:
        text = self.colour_combo.currentText()
        return "" if text == NONE else text

    @colour_by.setter
    def colour_by(self, name: str) -> None:
        name = name or NONE
        if self.colour_combo.findText(name) < 0:
            raise ValueError(f"no column {name!r} to colour by; choices: {', '.join(self.colour_choices)}")
        self.colour_combo.setCurrentText(name)

    @property
    def colour_choices(self) -> list[str]:
        return [self.colour_combo.itemText(i) for i in range(1, self.colour_combo.count())]

    @property
    def colour_range(self) -> tuple[float, float] | None:
        c = self.colouring
        return None if c is None or c.kind in ("categorical", "rgb") else (c.lo, c.hi)

    @colour_range.setter
    def colour_range(self, value: tuple[float, float]) -> None:
        lo, hi = map(float, value)
        if not hi > lo:
            raise ValueError(f"colour range needs low < high, got {lo} .. {hi}")
        c = self.colouring
        if c is None or c.kind in ("categorical", "rgb"):
            raise ValueError("the colour range applies to a continuous colouring; choose one first")
        c.lo, c.hi = lo, hi  # exact: the boxes show them rounded
        self._show_colour_key()
        self._recolour()

    # ------------------------------------------------------------------ columns
    def _colour_run_opened(self) -> None:
        """A run was opened: the latent axes at once, the particle table read in a worker."""
        self.particle_table = self.artefacts = self.run_table = None
        self.colour_columns = {}
        self._set_colour_columns(colour_columns_of(None, self.latents))
        self.artefact_label.setText("")
        self.residual_btn.setEnabled(False)
        self.colour_status.setText("reading the particle table…")
        self.table_worker = self.background.start(read_particle_table, self.run_dir, self.run.config, self.latents,
                                                  returned=self._table_ready, errored=self._table_failed)

    def _table_failed(self, exc) -> None:
        self.table_worker = None
        self.colour_status.setText(f"no particle table: {exc}")

    def _table_ready(self, result) -> None:
        self.table_worker = None
        if self.latents is None or len(result.table) != len(self.latents):
            return  # another run was opened meanwhile
        self.run_table, self.particle_table, self.artefacts = result, result.table, result.artefacts
        self._set_colour_columns(colour_columns_of(result.table, self.latents))
        self._show_artefacts()
        has_residual = "residual" in result.table
        self.residual_btn.setEnabled(not has_residual)
        where = f"; residual from {result.residual_from}" if has_residual else ""
        self.colour_status.setText(f"{len(result.table):,} particles from {result.particle_file}{where}")

    def add_colour_columns(self, columns: dict[str, np.ndarray], choose: str | None = None) -> None:
        """Offer more colour choices (``name -> (n,)`` values, NaN where unknown), e.g. another
        tool's latents; ``choose`` one of them at once."""
        n = 0 if self.latents is None else len(self.latents)
        for name, v in columns.items():
            if len(v) != n:
                raise ValueError(f"colour column {name!r} has {len(v)} values for {n} particles")
        self._set_colour_columns({**self.colour_columns, **columns})
        if choose:
            self.colour_by = choose

    def _set_colour_columns(self, columns: dict[str, np.ndarray]) -> None:
        keep = self.colour_by
        self.colour_columns = columns
        self.colour_combo.blockSignals(True)
        self.colour_combo.clear()
        self.colour_combo.addItems([NONE, *columns])
        self.colour_combo.blockSignals(False)
        if keep in columns:
            self.colour_combo.setCurrentText(keep)
        self._colour_chosen(self.colour_combo.currentText())

    # ------------------------------------------------------------------ drawing
    def _colour_chosen(self, text: str) -> None:
        name = "" if text == NONE else text
        if not name or name not in self.colour_columns:
            self.colouring = None
        else:
            try:
                self.colouring = colouring_for(name, self.colour_columns[name])
            except ValueError as exc:
                show_error(f"napari-flex3d: {exc}")
                self.colouring = None
        self._show_colour_key()
        self._flag_choice()
        self._recolour()

    def _range_edited(self, *_) -> None:
        c = self.colouring
        if c is None or c.kind in ("categorical", "rgb"):
            return
        lo, hi = self.colour_lo.value(), self.colour_hi.value()
        if hi > lo and (lo, hi) != (c.lo, c.hi):
            c.lo, c.hi = lo, hi
            self._recolour()

    def _recolour(self) -> None:
        """Draw the scatter, and the 3D view if open, in the current colouring."""
        self._redraw()
        if getattr(self, "view3d", None) is not None:
            self.view3d.refresh_colours()

    def _show_colour_key(self) -> None:
        c = self.colouring
        continuous = c is not None and c.kind in ("continuous", "cyclic")
        self.colour_range_row.setEnabled(continuous)  # kept in place: the plot above does not jump
        self.colour_bar.clear()
        if continuous:
            span = abs(c.hi - c.lo)
            decimals = 0 if span >= 1000 else 2 if span >= 10 else 4  # Å of defocus or a unit vector's parts
            for spin, v in ((self.colour_lo, c.lo), (self.colour_hi, c.hi)):
                spin.blockSignals(True)
                spin.setDecimals(decimals)
                spin.setValue(v)
                spin.blockSignals(False)
            self.colour_bar.setPixmap(_bar_pixmap(c.palette))
        if c is None or continuous:
            missing = int(c.missing.sum()) if c is not None else 0
            self.colour_legend.setText(f"{missing:,} particles without a value (grey)" if missing else "")
        elif c.kind == "rgb":
            self.colour_legend.setText("red, green, blue: |x|, |y|, |z| of the viewing direction (white: oblique)")
        else:
            pal = c.palette
            items = [f'<span style="color: rgb({pal[i][0]},{pal[i][1]},{pal[i][2]})">&#9632;</span> {v:g}'
                     for i, v in enumerate(c.categories)]
            self.colour_legend.setText("&nbsp;&nbsp;".join(items))

    def _show_artefacts(self) -> None:
        from ..analyze.covariates import ARTEFACT_SPEARMAN

        flags = self.artefacts
        if flags is None:
            return
        bad = flags[flags["flagged"]]
        if bad.empty:
            self.artefact_label.setStyleSheet("")
            self.artefact_label.setText(f"no latent axis tracks defocus or pose (|Spearman| ≤ {ARTEFACT_SPEARMAN})")
            return
        lines = [f"⚠ {self._axis_name(r['axis'])} tracks {r['covariate']} (Spearman {r['spearman']:+.2f})"
                 for _, r in bad.iterrows()]
        self.artefact_label.setStyleSheet("color: #ffb74d")
        self.artefact_label.setText("; ".join(lines) + f": above {ARTEFACT_SPEARMAN}, maybe a pose or defocus "
                                    "artefact, not motion (colour by it to see)")

    @staticmethod
    def _axis_name(table_axis: str) -> str:
        """The report's 1-based ``z1`` as the explorer's 0-based ``z0``."""
        return f"z{int(table_axis[1:]) - 1}"

    def _flag_choice(self) -> None:
        """Beside the choice: the latent axes it is flagged against, if any."""
        flags, nuisance = self.artefacts, NUISANCE_OF.get(self.colour_by)
        if flags is None or nuisance is None:
            self.colour_flag.setText("")
            return
        hit = flags[flags["flagged"] & flags["covariate"].str.contains(nuisance, regex=False)]
        axes = ", ".join(self._axis_name(a) for a in hit["axis"])
        self.colour_flag.setText(f"⚠ tracked by {axes}" if axes else "")

    # ------------------------------------------------------------------ residual
    def compute_residual(self) -> None:
        """The per-particle residual (``analyze.run_table.run_residuals``) in a worker; then a colour choice."""
        from ..analyze.run_table import run_residuals

        if self.run_table is None:
            show_error("napari-flex3d: the particle table is not read yet (open a run and wait)")
            return
        if self.residual_worker is not None:
            return
        self._residual_done = (0, len(self.latents))

        def progress(done, total):
            self._residual_done = (done, total)  # read by the GUI thread's timer

        self.residual_btn.setEnabled(False)
        self._residual_timer.start()
        self.residual_worker = self.background.start(run_residuals, self.run_dir, self.run_table.ps, self.latents,
                                                     progress, returned=self._residual_ready,
                                                     finished=self._residual_finished)

    def _show_residual_progress(self) -> None:
        done, total = self._residual_done
        self.colour_status.setText(f"residual: {done:,} of {total:,} particles")

    def _residual_finished(self) -> None:
        self._residual_timer.stop()
        self.residual_worker = None
        self.residual_btn.setEnabled("residual" not in self.colour_columns)

    def _residual_ready(self, residual: np.ndarray) -> None:
        if self.latents is None or len(residual) != len(self.latents):
            return
        if self.particle_table is not None:
            self.particle_table["residual"] = residual
        self.colour_status.setText(f"residual: median {np.median(residual):.3f} (1 = only noise)")
        self.add_colour_columns({"residual": np.asarray(residual, np.float64)}, choose="residual")
