"""GUI: every job a widget starts writes its equivalent ``flex3d`` command, and that command,
run as written (into another output), makes the same files: mesh, training run, half maps, and
the half maps of a selection (the Motion analysis widget's subset job)."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TINY = dict(epochs=1, batch=32, max_particles=64, hidden=16, layers=2, latent_dim=2, latent_grid=3, latent_steps=1,
            val_fraction=0.1, threads=1, preview_every=0)


def _command(path) -> list[str]:
    """The command line held by a written script (its last line)."""
    return shlex.split(path.read_text().strip().splitlines()[-1])


def _run_elsewhere(argv: list[str], option: str, new) -> None:
    """Run ``argv`` (``flex3d ...``) with ``--option``'s value replaced by ``new``, as the shell would."""
    from napari_flex3d.cli import main

    prefix = f"--{option}="
    assert sum(a.startswith(prefix) for a in argv) == 1, argv
    argv = [prefix + str(new) if a.startswith(prefix) else a for a in argv]
    assert argv[0] == "flex3d"
    threads = torch.get_num_threads()
    try:
        assert main(argv[1:] + (["--quiet"] if argv[1] in ("train", "reconstruct") else [])) == 0
    finally:
        torch.set_num_threads(threads)


def test_mesh_train_and_reconstruct_commands_rebuild_the_same_files(make_napari_viewer, qtbot, load_sample_into,
                                                                   tmp_path):
    from napari_flex3d._napari._data_widget import NO_MOTION_LAYER, RIGID_LAYER
    from napari_flex3d._napari._reconstruct_widget import ReconstructWidget
    from napari_flex3d._napari._train_widget import TrainWidget
    from napari_flex3d.io.atomic import COMMAND_FILE
    from napari_flex3d.io.checkpoint import load_checkpoint
    from napari_flex3d.io.mrc import read_map
    from napari_flex3d.model.run import checkpoint_path

    viewer = make_napari_viewer()
    data = load_sample_into(viewer)
    assert not data.command_btn.isEnabled()

    # --- the mesh, with both masks painted: `flex3d mesh` rebuilds the same arrays from the map
    data.add_paint_layers()
    half = data.session.consensus.shape[-1] // 2
    viewer.layers[NO_MOTION_LAYER].data[:, :, : half - 6] = 1
    viewer.layers[RIGID_LAYER].data[:, :, half + 4 :] = 1
    saved = data.save_mesh(tmp_path / "gui" / "mesh.npz")
    script = tmp_path / "gui" / "mesh_command.sh"
    argv = _command(script)
    assert argv[:2] == ["flex3d", "mesh"] and data.command_btn.isEnabled() and data.command_btn.command == shlex.join(argv)
    assert (tmp_path / "gui" / "mesh_rigid_labels.mrc").is_file() and (tmp_path / "gui" / "mesh_no_motion_labels.mrc").is_file()
    _run_elsewhere(argv, "out", tmp_path / "cli_mesh.npz")
    a, b = np.load(saved, allow_pickle=False), np.load(tmp_path / "cli_mesh.npz", allow_pickle=False)
    assert sorted(a.files) == sorted(b.files) and {"rigidity_weights", "deformation_mask"} <= set(a.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    w = a["rigidity_weights"]
    assert w.max() > 5 * np.median(w)  # the painted rigid cells are in it
    assert 0 < (a["deformation_mask"] == 0).sum() < len(a["deformation_mask"])  # and the painted still ones

    # "Copy command" puts it on the clipboard
    from qtpy.QtWidgets import QApplication

    data.command_btn.click()
    assert QApplication.clipboard().text() == data.command_btn.command

    # --- a training run started from the Train widget; its command trains the same model
    train = TrainWidget(viewer)
    qtbot.waitUntil(lambda: not train.preload_pending, timeout=60_000)
    run = tmp_path / "run"
    train.set_option(out=str(run), device="cpu", **TINY)
    train.start()
    qtbot.waitUntil(lambda: train.state == "idle", timeout=180_000)
    assert train.error is None, train.error
    argv = _command(run / COMMAND_FILE)
    assert argv[:2] == ["flex3d", "train"] and train.command_btn.command == shlex.join(argv)
    assert f"--mesh={run / 'mesh.npz'}" in argv  # the mesh the widget wrote for the run
    _run_elsewhere(argv, "out", tmp_path / "cli_run")
    ga, gb = (load_checkpoint(checkpoint_path(d)) for d in (run, tmp_path / "cli_run"))
    for key in ga["model"]:
        assert torch.equal(ga["model"][key], gb["model"][key]), key
    np.testing.assert_array_equal(np.load(run / "latents.npy"), np.load(tmp_path / "cli_run" / "latents.npy"))

    # --- half maps from the Reconstruct widget; its command solves the same maps
    rec = ReconstructWidget(viewer)
    rec.run_dir = str(run)
    rec.out_dir = str(tmp_path / "rec")
    rec.iterations = 1
    rec.rigid = False
    rec.reconstruct()
    qtbot.waitUntil(lambda: rec.state == "idle", timeout=180_000)
    assert rec.error is None, rec.error
    argv = _command(tmp_path / "rec" / COMMAND_FILE)
    assert argv[:2] == ["flex3d", "reconstruct"] and "--no-rigid" in argv and "--iterations=1" in argv
    _run_elsewhere(argv, "out", tmp_path / "cli_rec")
    for name in ("flex_half_A.mrc", "flex_half_B.mrc"):
        ma, mb = read_map(tmp_path / "rec" / name), read_map(tmp_path / "cli_rec" / name)
        np.testing.assert_array_equal(ma.data, mb.data, err_msg=name)

    # --- the Motion analysis widget's map of a selection; `flex3d reconstruct --subset` solves the same maps
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d._napari._motion_widget import MotionWidget

    ex = LatentExplorerWidget(viewer)
    viewer.window.add_dock_widget(ex, name="Latent explorer")
    ex.open_run(run)
    motion = MotionWidget(viewer)
    rows = np.arange(0, len(ex.latents), 2)
    ex.set_selection(rows, "test")
    motion.out_dir, motion.iterations, motion.rigid = str(tmp_path / "subset"), 1, False
    motion.map_selection()
    qtbot.waitUntil(lambda: motion.subset_worker is None, timeout=180_000)
    assert motion.subset_error is None, motion.subset_error
    argv = _command(tmp_path / "subset" / COMMAND_FILE)
    assert argv[:2] == ["flex3d", "reconstruct"] and f"--subset={tmp_path / 'subset' / 'subset_particles.star'}" in argv
    assert motion.subset_command_btn.command == shlex.join(argv)
    _run_elsewhere(argv, "out", tmp_path / "cli_subset")
    for name in ("flex_half_A.mrc", "flex_half_B.mrc"):
        ma, mb = read_map(tmp_path / "subset" / name), read_map(tmp_path / "cli_subset" / name)
        np.testing.assert_array_equal(ma.data, mb.data, err_msg=name)
    assert not np.array_equal(ma.data, read_map(tmp_path / "rec" / name).data)  # not the full set's map
