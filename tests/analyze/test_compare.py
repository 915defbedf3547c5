"""Other tools' latents are matched by image name, whatever their row order; the z.pkl reader runs no code."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import starfile

from napari_flex3d.analyze.compare import compare_latents, match_by_name, names_from_file, particle_names, read_external
from napari_flex3d.io.particles import read_particles, write_cs


def _ours(hinge_sim):
    ps = read_particles(hinge_sim / "particles.star")
    z = np.stack([np.linspace(-1, 1, len(ps)), np.random.default_rng(0).normal(size=len(ps))], axis=1)
    return ps, z


def _shuffled_star(hinge_sim, tmp_path, values: np.ndarray, prefix: str):
    data = starfile.read(hinge_sim / "particles.star", always_dict=True)
    block = data["particles"].copy()
    for i in range(values.shape[1]):
        block[f"{prefix}{i + 1}"] = values[:, i]
    perm = np.random.default_rng(5).permutation(len(block))
    data["particles"] = block.iloc[perm].reset_index(drop=True)
    path = tmp_path / "other.star"
    starfile.write(data, path)
    return path, perm


def test_star_column_matched_by_name_survives_shuffling(hinge_sim, tmp_path):
    ps, z = _ours(hinge_sim)
    theirs = np.stack([z[:, 0] ** 3, -z[:, 1]], axis=1)  # a monotone map of ours, axis by axis
    path, perm = _shuffled_star(hinge_sim, tmp_path, theirs, "rlnDynaLatent")
    ext = read_external(f"{path}::rlnDynaLatent")
    assert ext.columns == ["rlnDynaLatent1", "rlnDynaLatent2"]
    np.testing.assert_allclose(ext.values, theirs[perm], atol=1e-5)  # the file really is in another order
    ours_rows, their_rows = match_by_name(particle_names(ps), ext.names)
    assert len(ours_rows) == len(ps)
    np.testing.assert_allclose(ext.values[their_rows], theirs, atol=1e-5)  # STAR keeps 6 digits
    result = compare_latents(z, ext.values[their_rows])
    np.testing.assert_allclose(np.diag(result["spearman"]), [1.0, -1.0], atol=1e-3)
    naive = compare_latents(z, ext.values)  # by row order the same file says nothing
    assert np.abs(naive["spearman"]).max() < 0.3
    with pytest.raises(ValueError, match="rlnNothing"):
        read_external(f"{path}::rlnNothing")


def test_cryosparc_components_matched_by_blob_name(hinge_sim, tmp_path):
    ps, z = _ours(hinge_sim)
    cs = tmp_path / "particles.cs"
    write_cs(ps, cs, extra_fields={"components_mode_0/value": z[:, 0], "components_mode_1/value": z[:, 1]})
    rec = np.load(cs)
    perm = np.random.default_rng(6).permutation(len(rec))
    with open(tmp_path / "shuffled.cs", "wb") as fh:
        np.save(fh, rec[perm])
    ext = read_external(str(tmp_path / "shuffled.cs"))
    ours_rows, their_rows = match_by_name(particle_names(ps), ext.names)
    np.testing.assert_allclose(ext.values[their_rows], z[ours_rows], rtol=1e-6, atol=1e-6)
    assert len(ours_rows) == len(ps)
    # the .cs names and the STAR names are the same particles
    assert set(names_from_file(cs)) == set(names_from_file(hinge_sim / "particles.star"))


def test_zpkl_follows_its_particle_file(hinge_sim, tmp_path):
    ps, z = _ours(hinge_sim)
    path, perm = _shuffled_star(hinge_sim, tmp_path, z, "rlnUnused")
    pkl = tmp_path / "z.pkl"
    pkl.write_bytes(pickle.dumps(z[perm].astype(np.float32)))  # cryoDRGN's rows: those of its own (shuffled) STAR
    ext = read_external(f"{pkl}::{path}")
    ours_rows, their_rows = match_by_name(particle_names(ps), ext.names)
    np.testing.assert_allclose(ext.values[their_rows], z[ours_rows], rtol=1e-6)
    with pytest.raises(ValueError, match="particle file"):
        read_external(str(pkl))


def test_zpkl_carrying_code_is_refused(tmp_path, monkeypatch):
    """The comparison goes through the array-only reader (tests/training/test_latents.py tests it
    further): a protocol-0 pickle that calls ``builtins.eval`` is refused before anything runs."""
    monkeypatch.chdir(tmp_path)
    pkl = tmp_path / "z.pkl"
    pkl.write_bytes(b"cbuiltins\neval\n(S'open(\"PWNED\", \"w\")'\ntR.")
    with pytest.raises(ValueError, match="refusing to load builtins.eval"):
        read_external(f"{pkl}::{tmp_path / 'unused.star'}")
    assert not (tmp_path / "PWNED").exists()


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="more than once"):
        match_by_name(np.array(["0@a.mrcs"]), np.array(["0@a.mrcs", "0@a.mrcs"]))
