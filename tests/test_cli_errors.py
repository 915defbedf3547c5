"""Bad input at the command line: one line naming the file or option, exit code 2, never a traceback.

One table of ``flex3d`` argument lists -> (expected exit code, message fragment), run
in-process through ``cli.main``. The inputs are a tiny simulated dataset and a one-latent
run folder built here; ``{name}`` in an argument is replaced by the path of that input.
"""

from __future__ import annotations

import errno
import json
import os
import socket

import numpy as np
import pytest
import torch

from napari_flex3d import cli
from napari_flex3d.io.lock import LOCK_NAME
from napari_flex3d.io.mrc import read_map, write_map

BOX, APIX = 24, 4.0


def _run_folder(out, consensus):
    """A run folder with K = 1 and the fresh model's flow (near zero): enough for generate."""
    from napari_flex3d.config import TrainConfig, to_dict
    from napari_flex3d.io.checkpoint import save_checkpoint
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.model.flex import FlexModel
    from napari_flex3d.model.run import checkpoint_path

    mask = np.zeros((BOX,) * 3, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    mesh = build_grid_mesh(mask, APIX, cell_size_a=16.0)
    config = TrainConfig(latent_dim=1, hidden=2, layers=1, epochs=1, band_start=1.0, band_end=1.0)
    torch.manual_seed(0)
    model = FlexModel.from_map(consensus, APIX, mesh, mask, latent_dim=1, hidden=2, layers=1, kernel="cubic")
    save_checkpoint(checkpoint_path(out), {
        "config_json": json.dumps(to_dict(config)), "epoch": 1, "box": BOX, "apix": APIX,
        "model": model.state_dict(), "latents": torch.linspace(-1, 1, 11)[:, None],
    })
    return mesh


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """``{name: path}`` of good and bad inputs."""
    from napari_flex3d.mesh.mesh import save_mesh
    from napari_flex3d.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("cli_errors")
    sim = simulate_dataset(root / "sim", n_particles=40, box=BOX, apix=APIX, snr=1.0, motion="hinge", seed=0)
    consensus = np.asarray(read_map(root / "sim" / "consensus.mrc").data, dtype=np.float32)
    mesh = _run_folder(root / "run", consensus)
    p = {"star": sim.particles_star, "map": root / "sim" / "consensus.mrc", "run": root / "run", "sim": root / "sim"}
    p["file"] = root / "a_file.txt"
    p["file"].write_text("not a folder")
    p["dir"] = root / "a_folder.mrc"
    p["dir"].mkdir()
    p["zero_map"] = root / "zero.mrc"
    write_map(p["zero_map"], np.zeros((BOX,) * 3, np.float32), APIX)
    p["nan_map"] = root / "nan.mrc"
    write_map(p["nan_map"], consensus, APIX)
    data = np.memmap(p["nan_map"], dtype=np.float32, mode="r+", offset=1024, shape=(BOX**3,))
    data[100] = np.nan
    data.flush()
    del data
    p["labels_2a"] = root / "labels_2a.mrc"
    write_map(p["labels_2a"], np.ones((BOX,) * 3, np.float32), 2.0)
    (root / "moved").mkdir()
    p["nostack_star"] = root / "moved" / "particles.star"
    p["nostack_star"].write_text(sim.particles_star.read_text())
    p["locked"] = root / "locked"
    p["locked"].mkdir()
    (p["locked"] / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    p["mesh_2a"] = save_mesh(mesh.replace(apix=2.0, vertices_a=mesh.vertices_a / 2), root / "mesh_2a.npz")
    np.save(root / "run" / "latents.npy", np.linspace(-1, 1, 40, dtype=np.float32)[:, None])
    p["nan_run"] = root / "nan_run"
    _run_folder(p["nan_run"], consensus)
    np.save(p["nan_run"] / "latents.npy", np.full((40, 1), np.nan, np.float32))
    p["map_32"] = root / "map_32.mrc"  # a map of another box and pixel size (the particles: 24 at 4 Å)
    write_map(p["map_32"], np.pad(consensus, 4), 3.0)
    p["short_star"] = root / "sim" / "short.star"  # names an image past the end of the 40-image stack
    p["short_star"].write_text(sim.particles_star.read_text().replace("000040@", "000045@"))
    p["tmp"] = root
    return p


def _run(capsys, argv, inputs):
    code = cli.main([a.format(**inputs) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ["train", "--particles", "{star}", "--map", "{map}", "--out", "{tmp}/t", "--quiet"]
MESH = ["mesh", "--map", "{map}", "--out", "{tmp}/m.npz"]
GEN = ["generate", "--run", "{run}", "--out", "{tmp}/g.mrc"]
REC = ["reconstruct", "--run", "{run}", "--particles", "{star}", "--out", "{tmp}/r", "--quiet"]
SIM = ["simulate", "--out", "{tmp}/s", "--quiet"]

BAD = [
    # files: missing, a folder for a file, a path under a file, an existing file for a folder
    (["info", "{tmp}/absent.star"], "absent.star: no such file"),
    (["info", "{dir}"], "a_folder.mrc: is a folder, not a file"),
    (["info", "{tmp}"], "is a folder, not"),
    (TRAIN[:2] + ["{dir}"] + TRAIN[3:], "a_folder.mrc: is a folder, not a particle file"),
    (["mesh", "--map", "{tmp}/absent.mrc", "--out", "{tmp}/m.npz"], "absent.mrc"),
    (["mesh", "--map", "{dir}", "--out", "{tmp}/m.npz"], "a_folder.mrc: is a folder, not an MRC file"),
    (["mesh", "--map", "{map}", "--out", "{file}/m.npz"], "a_file.txt: File exists (a file is in the way"),
    (["mesh", "--map", "{map}", "--out", "{dir}/"], "a_folder.mrc/ is a folder; give the mesh file's name"),
    (["generate", "--run", "{run}", "--z", "0.5", "--out", "{file}/g.mrc"], "a_file.txt: File exists (a file is in the way"),
    (["generate", "--run", "{run}", "--z", "0.5", "--out", "{dir}"], "a folder is in the way"),
    (TRAIN[:5] + ["--out", "{file}"], "a_file.txt: File exists (a file is in the way"),
    (TRAIN[:5] + ["--out", "{file}/t"], "a_file.txt/t: Not a directory (a part of this path is a file"),
    (["simulate", "--out", "{file}", "--n-particles", "10"], "a_file.txt"),
    (["generate", "--run", "{tmp}/norun", "--z", "0", "--out", "{tmp}/g.mrc"], "no checkpoint"),
    # maps: non-finite, constant, labels at another voxel size
    (MESH[:2] + ["{nan_map}"] + MESH[3:], "nan.mrc: MRC data: 1 of 13824 values are NaN or infinite"),
    (MESH[:2] + ["{zero_map}"] + MESH[3:], "zero.mrc: every voxel is 0"),
    (MESH + ["--rigid-labels", "{labels_2a}"], "label voxel size 2 Å differs from the map's 4 Å"),
    (TRAIN[:4] + ["{zero_map}"] + TRAIN[5:], "zero.mrc: every voxel is 0"),
    (TRAIN[:4] + ["{map_32}"] + TRAIN[5:], "map_32.mrc: the map is 32 voxels at 3 Å, the particles' box is 24 pixels at "
                                           "4 Å; pass --resample-map"),
    (REC + ["--mask", "{labels_2a}"], "labels_2a.mrc: mask: 24 voxels at 2 Å (48.0 Å across), the map 24 voxels at 4 Å "
                                      "(96.0 Å): made for another map"),
    (["analyze", "{run}", "--labels", "{labels_2a}", "--out", "{tmp}/an"], "labels_2a.mrc: label volume: 24 voxels at 2 Å "
                                                                         "(48.0 Å across), the map 24 voxels at 4 Å"),
    (TRAIN[:2] + ["{short_star}"] + TRAIN[3:], "1 particle(s) in 1 stack(s) point past the end of their stack"),
    # particles: missing stacks; a folder another job holds
    (["train", "--particles", "{nostack_star}", "--map", "{map}", "--out", "{tmp}/t2"], "1 of 1 image stack(s) not found"),
    (TRAIN[:5] + ["--out", "{locked}"], "a running job holds this folder (process"),
    (SIM[:2] + ["{sim}"], "already holds a dataset"),
    # options, one check each
    (TRAIN + ["--batch", "0"], "--batch must be >= 1, got 0"),
    (TRAIN + ["--latent-grid", "1"], "--latent-grid must be >= 2, got 1"),
    (TRAIN + ["--latent-box", "32", "--box", "24"], "latent_box 32 must be even, >= 16 and <= the training box 24"),
    (TRAIN + ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (TRAIN + ["--band-start", "0.9", "--band-end", "0.5"], "--band-start 0.9 must be <= --band-end 0.5"),
    (TRAIN + ["--latent-dim", "0"], "--latent-dim must be >= 1, got 0"),
    (TRAIN + ["--lr-flow", "-1"], "--lr-flow must be > 0, got -1"),
    (TRAIN + ["--lr-flow", "nan"], "--lr-flow must be finite"),
    (TRAIN + ["--box", "63"], "training box 63 must be even, >= 16"),
    (TRAIN + ["--box", "8"], "training box 8 must be even, >= 16"),
    (TRAIN + ["--epochs", "4", "--band-ramp-epochs", "6"], "--band-ramp-epochs 6 must be <= --epochs 4"),
    (TRAIN + ["--latent-noise", "-0.1"], "--latent-noise must be >= 0"),
    (TRAIN + ["--val-fraction", "1.5"], "val_fraction must lie in [0, 1), got 1.5"),
    (TRAIN + ["--max-bad-image-fraction", "1.5"], "--max-bad-image-fraction must be <= 1, got 1.5"),
    (REC + ["--max-bad-image-fraction", "-0.1"], "--max-bad-image-fraction must be >= 0, got -0.1"),
    (["train", "--particles", "{star}"], "flex3d train needs --map, --out"),
    (GEN + ["--z", "nan"], "--z must be finite"),
    (GEN + ["--z", "1,abc"], "--z must be numbers separated by commas"),
    (GEN + ["--z", "0.5", "--axis", "0"], "exactly one of --z"),
    (GEN + ["--z", "0.5", "--box", "63"], "--box must be even"),
    (GEN + ["--axis", "0", "--frames", "1"], "--frames must be >= 2"),
    (GEN + ["--axis", "0", "--sigma-range", "-1"], "--sigma-range must be > 0"),
    (REC[:2] + ["{nan_run}"] + REC[3:], "latents.npy: 40 of 40 values are NaN or infinite"),
    (REC + ["--iterations", "0"], "--iterations must be >= 1, got 0"),
    (REC + ["--chunk", "0"], "--chunk must be >= 1, got 0"),
    (REC + ["--box", "63"], "--box must be even"),
    (REC + ["--randomise-from", "-5"], "--randomise-from must be > 0"),
    (SIM + ["--n-particles", "0"], "n_particles must be an integer >= 2"),
    (SIM + ["--box", "63"], "box must be an even integer >= 16"),
    (SIM + ["--apix", "0"], "apix must be a positive number"),
    (SIM + ["--seed", "-1"], "--seed must be >= 0"),
    (MESH + ["--dilate-a", "-1"], "--dilate-a must be >= 0"),
    (MESH + ["--cell-size-a", "0"], "--cell-size-a must be > 0"),
    (MESH + ["--volume-fraction", "2"], "--volume-fraction must be <= 1"),
]


@pytest.mark.parametrize("argv, fragment", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_input_gives_one_line_and_exit_2(capsys, inputs, argv, fragment):
    code, out, err = _run(capsys, argv, inputs)
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"flex3d {argv[0]}: error: "), err
    assert fragment in lines[0], lines[0]


def test_negative_latent_point_works_as_typed(capsys, inputs):
    code, out, err = _run(capsys, GEN + ["--z", "-1.5"], inputs)
    assert code == 0, err
    assert (inputs["tmp"] / "g.mrc").is_file() and "wrote" in out
    code, _, err = _run(capsys, ["generate", "--z", "-0.25", "--run", "{run}", "--out", "{tmp}/g2.mrc"], inputs)
    assert code == 0, err
    assert cli._join_negative_values(["--z", "-1.5,0.3", "--axis", "1"]) == ["--z=-1.5,0.3", "--axis", "1"]
    assert cli._join_negative_values(["--z", "--axis"]) == ["--z", "--axis"]  # an option stays an option


def test_a_map_that_would_be_all_zero_or_non_finite_is_not_written(capsys, inputs, monkeypatch):
    """Nothing lost: the job stops with the file's name, and a good map already there stays."""
    from napari_flex3d.explore import generate

    good = inputs["tmp"] / "kept.mrc"
    write_map(good, np.ones((BOX,) * 3, np.float32), APIX)
    before = good.read_bytes()
    monkeypatch.setattr(generate, "generate_volume", lambda *a, **k: (np.zeros((BOX,) * 3, np.float32), APIX))
    code, _, err = _run(capsys, GEN[:3] + ["--out", str(good), "--z", "0.5"], inputs)
    assert code == 2 and "kept.mrc: the convected map at z=0.5: every voxel is 0" in err
    with pytest.raises(ValueError, match="kept.mrc: refusing to write a map with NaN or infinite values"):
        write_map(good, np.full((BOX,) * 3, np.nan, np.float32), APIX)
    assert good.read_bytes() == before


def test_debug_keeps_the_traceback(capsys, inputs):
    code, _, err = _run(capsys, ["--debug", "info", "{tmp}/absent.star"], inputs)
    assert code == 2 and "Traceback" in err and "flex3d info: error:" in err.splitlines()[-1]
    code, _, err = _run(capsys, ["info", "{tmp}/absent.star", "--debug"], inputs)
    assert code == 2 and "Traceback" in err


@pytest.mark.parametrize("exc, fragment, code", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out/m.npz"), "/data/out/m.npz: Permission denied", 2),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/m.npz"), "the disk is full", 2),
    (OSError(errno.EFBIG, "File too large", "/data/out/m.npz"), "larger than this system allows", 2),
    (RuntimeError("CUDA error: device-side assert"), "internal error (RuntimeError", 3),
])
def test_system_and_internal_errors_are_one_line(capsys, inputs, monkeypatch, exc, fragment, code):
    from napari_flex3d import api

    def fail(*_, **__):
        raise exc

    monkeypatch.setattr(api, "build_mesh", fail)
    got, _, err = _run(capsys, MESH, inputs)
    assert got == code and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_stale_lock_is_taken_over_and_a_finished_job_leaves_none(tmp_path):
    from napari_flex3d.io.lock import folder_lock, read_lock

    dead = os.fork()
    if dead == 0:  # a child that exits at once: its PID is then free
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"taking over the lock of job {dead}"):
        with folder_lock(tmp_path, "test") as holder:
            assert read_lock(tmp_path)["pid"] == os.getpid() == holder["pid"]
            with pytest.raises(ValueError, match=f"process {os.getpid()} on"):
                with folder_lock(tmp_path, "second"):
                    pass
    assert read_lock(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(ValueError, match="process 1 on another-host"):  # cannot be checked from here
        with folder_lock(tmp_path):
            pass


def test_simulate_force_overwrites(capsys, inputs, monkeypatch):
    from napari_flex3d import api
    from napari_flex3d.simulate import dataset

    calls = []
    monkeypatch.setattr(dataset, "simulate_dataset", lambda out, **kw: calls.append(out) or "done")
    assert api.simulate(inputs["sim"], n_particles=10, box=16, force=True) == "done" and calls == [inputs["sim"]]


def test_a_full_disk_is_one_line(inputs, tmp_path):
    """A real ``EFBIG`` (``RLIMIT_FSIZE`` in a subprocess, standing in for a full disk): one line, exit 2."""
    import subprocess
    import sys

    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "from napari_flex3d.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["generate", "--run", str(inputs["run"]), "--z", "-0.5", "--out", str(tmp_path / "big.mrc")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("flex3d")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert "file size limit reached while writing" in lines[0] and "big.mrc" in lines[0], lines[0]
    assert "the previous big.mrc is intact" in lines[0], lines[0]
    assert "larger than this system allows" in lines[0], lines[0]
