"""Checks at the boundary: non-finite images and maps, missing stacks, meshes of another box,
degenerate cells, and one image-path resolver for every entry point."""

from __future__ import annotations

import numpy as np
import pytest

from io_fixtures import copy_formats, fmt  # noqa: F401 (pytest fixtures)
from napari_flex3d.io.mrc import read_header, read_map, write_map
from napari_flex3d.io.particles import read_particles
from napari_flex3d.io.values import require_finite, require_informative_map

STAR = "cryodrgn/relion31.star"
STACK = "cryodrgn/relion31.mrcs"


def test_nan_pixels_are_refused_naming_the_stack_and_image(copy_formats):
    base = copy_formats(STAR, STACK)
    h = read_header(base / STACK)
    data = np.memmap(base / STACK, dtype=h.dtype, mode="r+", offset=h.data_offset, shape=(h.nz, h.ny, h.nx))
    data[2, 10, 10] = np.inf
    data.flush()
    del data
    ps = read_particles(base / STAR)
    assert ps.images([0, 1]).shape == (2, 256, 256)  # the good images still read
    rows = np.flatnonzero(ps.image_indices == 2)
    with pytest.raises(ValueError, match=r"relion31.mrcs: image 3 \(1-based\) holds NaN or infinite pixels"):
        ps.images(np.array([0, rows[0]]))


def test_missing_stacks_are_counted_with_the_first_paths(copy_formats):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    assert ps.require_images() is ps
    (base / STACK).unlink()
    with pytest.raises(ValueError, match=r"relion31.star: 1 of 1 image stack\(s\) not found: .*relion31.mrcs; pass --root"):
        read_particles(base / STAR).require_images()


def test_many_missing_stacks_show_three_and_a_count(tmp_path):
    from napari_flex3d.io.particles import OpticsGroup, ParticleSet

    ps = ParticleSet.from_arrays(
        image_paths=np.array([str(tmp_path / f"s{i}.mrcs") for i in range(5)], dtype=object),
        image_indices=np.zeros(5, np.int64), defocus_u_a=np.full(5, 1e4),
        optics=OpticsGroup("opticsGroup1", 1, 300.0, 2.7, 0.1, 2.0, 16),
    )
    with pytest.raises(ValueError, match=r"5 of 5 image stack\(s\) not found: .*s0.mrcs, .*s1.mrcs, .*s2.mrcs, \.\.\. \(2 more\)"):
        ps.require_images()


def test_a_moved_project_resolves_alike_in_the_cli_api_and_napari(copy_formats):
    """Absolute stack names from another machine: the file's folder serves as the moved project's root."""
    from napari_flex3d._napari._layer_data import read_particle_file

    base = copy_formats(STAR, STACK)
    star = base / STAR
    star.write_text(star.read_text().replace("@relion31.mrcs", "@/elsewhere/project/relion31.mrcs"))
    a, b = read_particles(star), read_particle_file(star)
    assert list(a.image_paths) == list(b.image_paths)
    assert set(a.image_stacks()) == {str(base / STACK)} and all(a.image_stacks().values())


def test_maps_with_nan_and_constant_maps(tmp_path):
    write_map(tmp_path / "good.mrc", np.arange(27, dtype=np.float32).reshape(3, 3, 3), 1.0)
    raw = bytearray((tmp_path / "good.mrc").read_bytes())
    raw[1024 + 4 * 5: 1024 + 4 * 6] = np.float32(np.nan).tobytes()
    (tmp_path / "nan.mrc").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"nan.mrc: MRC data: 1 of 27 values are NaN or infinite \(first at index \(0, 1, 2\)\)"):
        read_map(tmp_path / "nan.mrc")
    with pytest.raises(ValueError, match="z.mrc: every voxel is 0"):
        require_informative_map(np.zeros((4, 4, 4)), "z.mrc")
    with pytest.raises(ValueError, match="c.mrc: every voxel is 2.5"):
        require_informative_map(np.full((4, 4, 4), 2.5), "c.mrc")
    assert require_finite(np.arange(3), "ints").tolist() == [0, 1, 2]  # integer arrays pass untouched


@pytest.fixture
def grid_mesh():
    from napari_flex3d.mesh.build import build_grid_mesh

    mask = np.zeros((16,) * 3, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    return build_grid_mesh(mask, 2.0, cell_size_a=8.0)


def test_mesh_of_another_box_is_refused_naming_both(tmp_path, grid_mesh):
    from napari_flex3d.mesh.mesh import load_mesh, save_mesh

    path = save_mesh(grid_mesh, tmp_path / "m.npz")
    assert load_mesh(path, box=16, apix=2.0).n_cells == grid_mesh.n_cells
    assert load_mesh(path, box=32, apix=1.0).n_cells == grid_mesh.n_cells  # same 32 Å box, finer voxels
    with pytest.raises(ValueError, match=r"built for a 16-voxel box at 2 Å \(32.0 Å\), the run's is 16 voxels at 3 Å"):
        load_mesh(path, box=16, apix=3.0)


@pytest.mark.parametrize("fault, count", [("inverted", 1), ("degenerate", 2)])
def test_degenerate_or_inverted_cells_are_counted(tmp_path, grid_mesh, fault, count):
    from napari_flex3d.mesh.mesh import load_mesh, save_mesh

    cells = grid_mesh.cells.copy()
    if fault == "inverted":
        cells[0] = cells[0][[1, 0, 2, 3]]
    else:
        cells[:2, 1] = cells[:2, 0]
    path = save_mesh(grid_mesh.replace(cells=cells), tmp_path / "m.npz")
    with pytest.raises(ValueError, match=f"m.npz: {count} of {grid_mesh.n_cells} cells are degenerate or inverted"):
        load_mesh(path)


@pytest.mark.parametrize("value", [0.0, 3.0])
def test_a_constant_map_has_no_automatic_threshold(value):
    """Every entry point (CLI, widgets) meets a message, not Otsu's IndexError on an empty histogram."""
    from napari_flex3d.mesh.masks import solvent_mask

    with pytest.raises(ValueError, match="the map is constant"):
        solvent_mask(np.full((16, 16, 16), value, np.float32), 2.0)


def test_relative_stack_names_resolve_from_the_file_not_the_working_folder(copy_formats, tmp_path, monkeypatch):
    """The CLI/API reader, the napari reader and the training's reader meet the same stacks from any folder."""
    from napari_flex3d import api
    from napari_flex3d._napari._layer_data import read_particle_file
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.run_state import read_inputs

    base = copy_formats(STAR, STACK)
    star = base / STAR
    (tmp_path / "elsewhere" / "cryodrgn").mkdir(parents=True)
    for decoy in (tmp_path / "elsewhere" / STACK, tmp_path / "elsewhere" / "relion31.mrcs"):
        decoy.write_bytes(b"a decoy in the working folder")
    seen = []
    for cwd in (base / "cryodrgn", tmp_path / "elsewhere"):
        monkeypatch.chdir(cwd)
        readers = [read_particles(star), api.read_particles(star), read_particle_file(star)]
        if read_particles(star).has_poses:
            readers.append(read_inputs(TrainConfig(particles=str(star), map="unused.mrc"), None))
        seen += [sorted(set(ps.image_paths)) for ps in readers]
    assert all(paths == [str(base / STACK)] for paths in seen), seen
