"""The napari front end (layer L4): the only place that imports Qt, napari, magicgui, superqt or pyqtgraph.

May import every other room of ``napari_flex3d``, by name (``from ..explore.generate import
RunVolumes``), inside functions where the import pulls in torch, so that napari lists and
docks the plugin without paying for it. Nothing else in the package imports this room.
Wired up by ``napari.yaml``: ``_reader``, ``_writer``, ``_sample`` and the four dock widgets
(``_data_widget``, ``_train_widget``, ``_explore_widget`` built from ``_explore_plot`` /
``_explore_preview`` / ``_explore_export``, ``_reconstruct_widget``); they share ``_session``,
``_workers``, ``_plots`` and ``_layer_data``.
"""
