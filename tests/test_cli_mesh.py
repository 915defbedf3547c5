"""`flex3d mesh`: mask and mesh of a map, with painted rigid and no-motion labels."""

from __future__ import annotations

import json

import numpy as np

from napari_flex3d.cli import main
from napari_flex3d.io.mrc import write_map
from napari_flex3d.mesh import load_mesh

BOX, APIX = 48, 3.0


def _two_blobs():
    z, y, x = np.meshgrid(*(np.arange(BOX) - BOX // 2,) * 3, indexing="ij")
    a = np.exp(-((x + 8) ** 2 + y**2 + z**2) / (2 * 4.0**2))
    b = 0.6 * np.exp(-((x - 9) ** 2 + y**2 + z**2) / (2 * 3.5**2))
    return (a + b).astype(np.float32), x


def test_mesh_command_writes_a_mesh_with_weights_and_labels(tmp_path, capsys):
    vol, x = _two_blobs()
    write_map(tmp_path / "map.mrc", vol, APIX)
    write_map(tmp_path / "rigid.mrc", (x < 0).astype(np.float32), APIX)  # left blob painted rigid
    write_map(tmp_path / "still.mrc", (x > 9).astype(np.float32), APIX)  # right tip may not move
    assert main(["mesh", "--map", str(tmp_path / "map.mrc"), "--out", str(tmp_path / "plain.npz"), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["n_vertices"] > 50 and plain["n_cells"] > 100
    assert main([
        "mesh", "--map", str(tmp_path / "map.mrc"), "--out", str(tmp_path / "m.npz"),
        "--rigid-labels", str(tmp_path / "rigid.mrc"), "--no-motion-labels", str(tmp_path / "still.mrc"),
    ]) == 0
    assert "vertices" in capsys.readouterr().out
    mesh = load_mesh(tmp_path / "m.npz")
    centre_x = mesh.vertices_a[mesh.cells].mean(axis=1)[:, 0]
    w = mesh.rigidity_weights
    assert w is not None and w[centre_x < -6].mean() > 3 * w[centre_x > 6].mean()
    m = mesh.motion_mask
    assert m is not None and (m[mesh.vertices_a[:, 0] > 9 * APIX + 3] == 0).all()
    assert (m[mesh.vertices_a[:, 0] < 0] == 1).all()


def test_mesh_command_names_a_bad_label_volume(tmp_path, capsys):
    vol, _ = _two_blobs()
    write_map(tmp_path / "map.mrc", vol, APIX)
    write_map(tmp_path / "small.mrc", np.zeros((16, 16, 16), np.float32), APIX)
    rc = main(["mesh", "--map", str(tmp_path / "map.mrc"), "--out", str(tmp_path / "m.npz"),
               "--rigid-labels", str(tmp_path / "small.mrc")])
    assert rc == 2
    assert "small.mrc" in capsys.readouterr().err


def test_every_entry_point_floors_empty_cells_at_the_one_default(tmp_path, capsys):
    """`flex3d mesh`, `api.build_mesh`, the model and the weights function share ``config.RIGIDITY_FLOOR``."""
    import inspect

    from napari_flex3d import api
    from napari_flex3d.config import RIGIDITY_FLOOR, TrainConfig
    from napari_flex3d.mesh.rigidity import cell_density_weights
    from napari_flex3d.model.flex import FlexModel

    vol, _ = _two_blobs()
    write_map(tmp_path / "map.mrc", vol, APIX)
    assert main(["mesh", "--map", str(tmp_path / "map.mrc"), "--out", str(tmp_path / "m.npz"), "--json"]) == 0
    capsys.readouterr()
    w = load_mesh(tmp_path / "m.npz").rigidity_weights
    assert w.min() == np.float32(RIGIDITY_FLOOR)  # the solvent cells sit at the floor
    assert (w > 0.9).any() and (w == w.min()).mean() > 0.2
    assert TrainConfig().rigidity_floor == RIGIDITY_FLOOR
    for fn, name in ((api.build_mesh, "rigidity_floor"), (FlexModel.from_map, "rigidity_floor"),
                     (cell_density_weights, "min_weight")):
        assert inspect.signature(fn).parameters[name].default == RIGIDITY_FLOOR, fn
