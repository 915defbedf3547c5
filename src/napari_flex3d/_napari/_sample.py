"""npe2 sample data: the simulated flexible molecule (consensus map + its particles).

Imports ``napari_flex3d.simulate`` and ``io`` inside the functions (the simulator pulls in
torch, which napari should not pay for when it only lists the sample), ``._layer_data``,
and the Data and mesh widget when a viewer is open.
"""

from __future__ import annotations

from ._layer_data import map_layer_data, particles_layer_data, read_particle_file


def load_sample(**kwargs):
    """Simulate (or re-simulate, it is deterministic) the sample; returns (result, map, ParticleSet)."""
    from ..io.mrc import read_map
    from ..simulate.dataset import make_sample

    result = make_sample(**kwargs)
    m = read_map(result.consensus)
    ps = read_particle_file(result.particles_star)
    return result, m, ps


def flexible_molecule():
    """Layers: the consensus map (iso-surface) and a few of its particles; the data widget gets both."""
    result, m, ps = load_sample()
    layers = [particles_layer_data(ps, "particles (sample)")]
    if not _open_data_widget(result, m, ps):  # the widget shows the map itself when it opens
        layers.insert(0, map_layer_data(m.data, float(result.apix), "consensus map", path=str(result.consensus)))
    return layers


def _open_data_widget(result, m, ps) -> bool:
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return False
        from ._data_widget import DataMeshWidget

        _, widget = viewer.window.add_plugin_dock_widget("napari-flex3d", "Data and mesh")
        if isinstance(widget, DataMeshWidget):
            widget.particles_path = str(result.particles_star)
            widget.set_particles(ps)
            widget.set_map(m.data, float(result.apix), path=str(result.consensus))
            return True
    except Exception as exc:
        from napari.utils.notifications import show_warning

        show_warning(f"napari-flex3d: could not open the data widget: {exc}")
    return False
