"""Training again without the outliers: the kept file (STAR or .cs), the settings, the command line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_flex3d.analyze.compare import particle_names
from napari_flex3d.analyze.retrain import kept_suffix, retrain_config, retrain_dir, train_argv, write_kept
from napari_flex3d.cli import build_parser
from napari_flex3d.config import TrainConfig, from_arguments
from napari_flex3d.io.particles import read_particles, write_cs


def _parsed(argv):
    return from_arguments(TrainConfig, build_parser().parse_args(argv[1:]))


def test_train_argv_reads_back_as_the_same_settings():
    config = TrainConfig(particles="/data/p q.star", map="/data/map.mrc", out="/runs/r", latent_dim=3, hidden=32,
                         band_end=0.65, mask_threshold=-0.013, latent_box=64, kernel="linear", max_particles=None,
                         half_set="A", threads=1, lr_latent=1e-4)
    argv = train_argv(config)
    assert argv[:5] == ["flex3d", "train", "--particles=/data/p q.star", "--map=/data/map.mrc", "--out=/runs/r"]
    assert "--hidden=32" in argv and "--mask-threshold=-0.013" in argv and not any(a.startswith("--epochs") for a in argv)
    assert _parsed(argv) == config


def test_retrain_config_points_the_run_at_the_kept_file(tmp_path):
    run = TrainConfig(particles="/p/in.cs", map="/p/map.mrc", out=str(tmp_path / "run"), passthrough="/p/pass.cs",
                      root="/p/project", max_particles=500, half_set="B", epochs=9)
    star = retrain_config(run, tmp_path / "kept.star", retrain_dir(run.out))
    assert star == dataclasses.replace(run, particles=str(tmp_path / "kept.star"), out=str(tmp_path / "run_without_outliers"),
                                       passthrough=None, root=None, max_particles=None)
    cs = retrain_config(run, tmp_path / "kept.cs", tmp_path / "new", mesh=tmp_path / "run" / "mesh.npz")
    assert cs.root == "/p/project" and cs.passthrough is None and cs.half_set == "B" and cs.epochs == 9
    assert cs.mesh == str(tmp_path / "run" / "mesh.npz") and star.mesh is None


def test_kept_particles_read_back_as_star_and_cs(hinge_sim, tmp_path):
    ps = read_particles(hinge_sim / "particles.star")
    outliers = np.array([0, 5, 199])
    path, kept = write_kept(ps, outliers, tmp_path / "kept.star")
    assert kept_suffix(ps) == ".star" and kept.tolist() == [i for i in range(len(ps)) if i not in (0, 5, 199)]
    back = read_particles(path)
    assert particle_names(back).tolist() == particle_names(ps)[kept].tolist()

    cs = read_particles(write_cs(ps, tmp_path / "all.cs"))  # a cryoSPARC input: its records ride along
    mask = np.zeros(len(cs), bool)
    mask[outliers] = True
    assert kept_suffix(cs) == ".cs"
    path, kept_cs = write_kept(cs, mask, tmp_path / "kept.cs")
    back = read_particles(path)
    np.testing.assert_array_equal(kept_cs, kept)
    np.testing.assert_array_equal(back.records["uid"], cs.records["uid"][kept])
    np.testing.assert_allclose(back.rotations, ps.rotations[kept], atol=1e-5)
    with pytest.raises(ValueError, match="nothing left to train on"):
        write_kept(ps, np.ones(len(ps), bool), tmp_path / "none.star")
