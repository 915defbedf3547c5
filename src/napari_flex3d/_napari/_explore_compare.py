"""The explorer's "Compare with other tools" box: another tool's latents beside ours.

``ExplorerCompare`` is the part of ``LatentExplorerWidget`` that loads cryoDRGN's
``z.pkl`` (the arrays-only reader), cryoSPARC 3DVA's ``.cs`` components or numeric STAR
columns (RELION, DynaMight), matches them to the run's particles by image name
(``analyze.compare.compare_source``, in a worker), shows the Spearman correlation of
each pair of axes and the canonical correlations, and offers their axes as colour
choices of our scatter. Imports Qt and this package's napari helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ._explore_plot import hbox_row

SOURCE_FILTER = "Latents (*.pkl *.npy *.cs *.star);;All files (*)"


def correlation_colour(r: float) -> QColor:
    """Blue (-1) through the background's grey (0) to red (+1), for a correlation cell."""
    a = min(abs(float(r)), 1.0)
    base = np.array([60, 60, 66])
    end = np.array([214, 39, 40]) if r > 0 else np.array([31, 119, 180])
    return QColor(*map(int, base + a * (end - base)))


class ExplorerCompare:
    """Mixin of ``LatentExplorerWidget``: load another tool's latents, show how they agree with ours.

    State: ``comparison`` (``analyze.compare.compare_source``'s dict, or ``None``),
    ``compare_worker``. Needs the host's ``run_table`` (``_explore_colour``),
    ``add_colour_columns`` and ``background`` (``._workers.Background``, which starts its worker).
    """

    def _init_compare(self) -> None:
        self.comparison: dict | None = None
        self.compare_worker = None

    def _compare_run_opened(self) -> None:
        """A run was opened: the last comparison belonged to the run before."""
        self.comparison = None
        self.compare_label.setText("")
        self.compare_table.hide()

    def _build_compare_box(self) -> QGroupBox:
        box = QGroupBox("Compare with other tools")
        vl = QVBoxLayout(box)
        self.compare_edit = QLineEdit()
        self.compare_edit.setPlaceholderText("cryoDRGN z.pkl, cryoSPARC 3DVA .cs, or a .star")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_source)
        vl.addWidget(hbox_row(self.compare_edit, browse))
        self.compare_spec = QLineEdit()
        self.compare_spec.setPlaceholderText("STAR column prefix, .cs field, or a z.pkl's particle file (optional)")
        self.compare_btn = QPushButton("Load")
        self.compare_btn.clicked.connect(lambda: self.load_comparison())
        vl.addWidget(hbox_row(self.compare_spec, self.compare_btn))
        self.compare_label = QLabel("")
        self.compare_label.setWordWrap(True)
        vl.addWidget(self.compare_label)
        self.compare_table = QTableWidget(0, 0)
        self.compare_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.compare_table.hide()
        vl.addWidget(self.compare_table)
        return box

    def _browse_source(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Another tool's latents", "", SOURCE_FILTER)
        if path:
            self.compare_edit.setText(path)

    @property
    def comparison_source(self) -> str:
        """``PATH`` or ``PATH::SPEC`` (``analyze.compare.read_external``'s source) from the two fields."""
        path, spec = self.compare_edit.text().strip(), self.compare_spec.text().strip()
        return f"{path}::{spec}" if spec else path

    def load_comparison(self, source: str | None = None) -> None:
        """Load ``source`` (default: the fields) in a worker; the matrix and colour choices follow."""
        from ..analyze.compare import compare_source

        if source is not None:
            path, _, spec = str(source).partition("::")
            self.compare_edit.setText(path)
            self.compare_spec.setText(spec)
        source = self.comparison_source
        if not source:
            show_error("napari-flex3d: give another tool's latents file to compare with")
            return
        if getattr(self, "run_table", None) is None:
            show_error("napari-flex3d: open a run and wait for its particle table before comparing")
            return
        self.compare_btn.setEnabled(False)
        self.compare_label.setText(f"reading {Path(source.partition('::')[0]).name}…")
        self.compare_worker = self.background.start(compare_source, source, self.run_table.ps, self.latents,
                                                    self.run_table.particle_file, returned=self._comparison_ready,
                                                    errored=self._comparison_failed,
                                                    finished=self._comparison_finished)

    def _comparison_failed(self, exc) -> None:
        self.compare_label.setText(f"not compared: {exc}")

    def _comparison_finished(self) -> None:
        self.compare_worker = None
        self.compare_btn.setEnabled(True)

    def _comparison_ready(self, result: dict) -> None:
        if self.latents is None or len(result["values"]) != len(self.latents):
            return  # another run was opened meanwhile
        self.comparison = result
        ext = result["external"]
        k = self.latents.shape[1]
        cc = ", ".join(f"{v:.2f}" for v in result["canonical"])
        self.compare_label.setText(
            f"{ext.label}: {result['matched']:,} of our {len(self.latents):,} particles matched by image name "
            f"(of its {len(ext.names):,}); canonical correlations {cc}. Spearman per pair of axes:")
        self._fill_matrix(result["spearman"], [f"z{i}" for i in range(k)], ext.columns)
        columns = {f"{ext.label}: {c}": result["values"][:, i] for i, c in enumerate(ext.columns)}
        self.add_colour_columns(columns, choose=next(iter(columns)))

    def _fill_matrix(self, r: np.ndarray, rows: list[str], cols: list[str]) -> None:
        t = self.compare_table
        t.setRowCount(len(rows))
        t.setColumnCount(len(cols))
        t.setVerticalHeaderLabels(rows)
        t.setHorizontalHeaderLabels([c.split(":")[-1] for c in cols])
        for i in range(len(rows)):
            for j in range(len(cols)):
                item = QTableWidgetItem(f"{r[i, j]:+.2f}")
                item.setBackground(correlation_colour(r[i, j]))
                item.setForeground(QColor("white"))
                t.setItem(i, j, item)
        rows_h = sum(t.rowHeight(i) for i in range(len(rows)))
        t.setFixedHeight(min(220, t.horizontalHeader().height() + rows_h + 4))  # no blank rows below
        t.show()
