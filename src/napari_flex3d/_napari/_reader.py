"""npe2 reader: MRC maps (3D, iso-surface), MRC stacks, and STAR / .cs particle files.

Imports ``napari_flex3d.io`` (inside the readers, so that npe2 asking ``get_reader`` about a
file costs nothing), ``._layer_data``, and the Data and mesh widget lazily (only when a
particle file is opened into a running viewer).
"""

from __future__ import annotations

from pathlib import Path


from ._layer_data import map_layer_data, particles_layer_data, read_particle_file

MAP_SUFFIXES = (".mrc", ".map")
STACK_SUFFIXES = (".mrcs",)
PARTICLE_SUFFIXES = (".star", ".cs")


def get_reader(path):
    """Return a reader for ``path`` if it is one of ours, else ``None`` (npe2 contract)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    suffix = Path(str(path)).suffix.lower()
    if suffix in MAP_SUFFIXES:
        return read_map_layer
    if suffix in STACK_SUFFIXES:
        return read_stack_layer
    if suffix in PARTICLE_SUFFIXES:
        return read_particles_layer
    return None


def _one(path) -> Path:
    return Path(str(path[0] if isinstance(path, list) else path))


def read_map_layer(path):
    """A 3D map as an iso-surface image layer; an MRC stack (ispg 0) as a 2D stack."""
    from ..io.mrc import read_map

    p = _one(path)
    if _is_stack(p):
        return read_stack_layer(path)
    m = read_map(p)
    return [map_layer_data(m.data, float(m.apix), p.stem, path=str(p))]


def _header_apix(p: Path) -> float:
    import mrcfile

    with mrcfile.open(p, mode="r", header_only=True, permissive=True) as f:
        return float(f.voxel_size.x) or 1.0


def _is_stack(p: Path) -> bool:
    """An image stack: space group 0 (MRC2014) and not a cube (some programs write maps with 0 too)."""
    import mrcfile

    with mrcfile.open(p, mode="r", header_only=True, permissive=True) as f:
        nx, nz = int(f.header.nx), int(f.header.nz)
        return int(f.header.ispg) == 0 and nz > 1 and nz != nx


def read_stack_layer(path):
    """An image stack ``(n, h, w)``, memory-mapped, scale = pixel size."""
    from ..io.mrc import open_stack

    p = _one(path)
    stack = open_stack(p)
    apix = getattr(stack, "apix", None) or _header_apix(p)
    return [(stack, {"name": p.stem, "scale": (1.0, apix, apix), "colormap": "gray", "metadata": {"apix": apix, "path": str(p)}}, "image")]


def read_particles_layer(path):
    """A particle file: a few images as a layer, and the data widget opened with the set loaded.

    When the image stacks cannot be found (a metadata file without its particles), the
    widget still opens with the set's summary and a warning says which stack is missing;
    no layer is made (npe2's null-layer sentinel).
    """
    p = _one(path)
    ps = read_particle_file(p)
    _open_data_widget(ps, p)
    try:
        return [particles_layer_data(ps, p.stem)]
    except (ValueError, FileNotFoundError, OSError) as exc:
        from napari.utils.notifications import show_warning

        show_warning(f"napari-flex3d: {len(ps)} particles read from {p.name}, but not their images: {exc}")
        return [(None,)]


def _open_data_widget(ps, p: Path) -> None:
    """Dock the Data and mesh widget on the current viewer and give it the particles."""
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return
        from ._data_widget import DataMeshWidget

        _, widget = viewer.window.add_plugin_dock_widget("napari-flex3d", "Data and mesh")
        if isinstance(widget, DataMeshWidget):
            widget.particles_path = str(p)
            widget.set_particles(ps)
    except Exception as exc:  # the layer still opens; say why the widget did not
        from napari.utils.notifications import show_warning

        show_warning(f"napari-flex3d: could not open the data widget: {exc}")
