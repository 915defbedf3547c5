"""The simulator: exact projections, non-rigid motion, the written dataset and its truth."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch

from napari_flex3d.conventions import euler_to_matrix
from napari_flex3d.ops.project import project
from napari_flex3d.simulate.dataset import (
    _average_volume,
    _draw_particles,
    make_sample,
    simulate_dataset,
    simulate_particles,
)
from napari_flex3d.simulate.molecule import build_molecule, deform, sample_motion_coords
from napari_flex3d.simulate.render import gaussian_profiles, project_atoms, render_volume

BOX, APIX = 32, 6.0
N_ATOMS = 1500


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine, two spinning OpenMP threads cost
    several times the CPU (measured 4x wall time) for these small tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _corr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    result = simulate_dataset(out, n_particles=300, box=BOX, apix=APIX, snr=0.5, motion="both", seed=3,
                              n_atoms=N_ATOMS)
    return out, result


def test_gaussian_profiles_match_dense_formula():
    centre = torch.tensor([-9.3, 0.0, 3.5, 15.49, 31.0, 40.2])
    got = gaussian_profiles(centre, 32, 1.5)
    grid = torch.arange(32.0)
    want = torch.exp(-((grid - centre[:, None]) ** 2) / (2 * 1.5**2)) / (np.sqrt(2 * np.pi) * 1.5)
    assert torch.allclose(got, want, atol=1e-6)


def test_projection_is_line_integral_of_rendered_volume():
    """Identity pose, no shift: the image is the rendered volume summed along z, exactly."""
    mol = build_molecule(BOX, APIX, n_atoms=800, seed=1)
    xyz = torch.as_tensor(deform(mol, np.array([[0.7]]), "hinge")[0], dtype=torch.float32)
    vol = render_volume(xyz, BOX, APIX, mol.sigma_a)  # (d, h, w)
    img = project_atoms(xyz, torch.eye(3)[None], torch.zeros(1, 2), BOX, APIX, mol.sigma_a)[0]
    assert torch.allclose(img, vol.sum(0), atol=1e-4 * float(img.max()))
    assert float(vol.sum()) == pytest.approx(800, rel=1e-3)  # unit mass per atom


def test_projection_matches_reference_projector_at_random_poses():
    """ops.project of the rendered state (Fourier slice) agrees with the exact atom projection."""
    mol = build_molecule(48, 4.0, n_atoms=1500, seed=2)
    coords = np.array([[-0.8, 0.6]])
    xyz = torch.as_tensor(deform(mol, coords, "both")[0], dtype=torch.float32)
    vol = render_volume(xyz, 48, 4.0, mol.sigma_a)
    rng = np.random.default_rng(0)
    euler = rng.uniform([-180, 0, -180], [180, 180, 180], (4, 3))
    rot = euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])
    shifts = rng.normal(0, 5.0, (4, 2))
    ref = project(vol, torch.as_tensor(rot, dtype=torch.float32), torch.as_tensor(shifts, dtype=torch.float32), 4.0)
    ours = project_atoms(xyz, torch.as_tensor(rot, dtype=torch.float32), torch.as_tensor(shifts, dtype=torch.float32),
                         48, 4.0, mol.sigma_a)
    for i in range(4):
        assert _corr(ours[i], ref[i]) > 0.99
    # a wrong convention (transposed A) must not pass
    bad = project_atoms(xyz, torch.as_tensor(rot, dtype=torch.float32).transpose(1, 2),
                        torch.as_tensor(shifts, dtype=torch.float32), 48, 4.0, mol.sigma_a)
    assert np.mean([_corr(bad[i], ref[i]) for i in range(4)]) < 0.9


def _pdist(x):
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


def test_hinge_is_rigid_in_each_domain_and_bends_across_the_linker():
    mol = build_molecule(64, 3.0, seed=0)
    a, b = deform(mol, np.array([[-1.0], [1.0]]), "hinge")
    body = np.nonzero((mol.domain == 0) & (mol.hinge_weight == 0))[0][:300]
    arm = np.nonzero((mol.domain == 2) & (mol.hinge_weight == 1))[0][:300]
    assert np.abs(_pdist(a[body]) - _pdist(b[body])).max() < 1e-9
    assert np.abs(_pdist(a[arm]) - _pdist(b[arm])).max() < 1e-9
    across = np.linalg.norm(a[body][:, None] - a[arm][None], axis=-1) - np.linalg.norm(
        b[body][:, None] - b[arm][None], axis=-1
    )
    assert np.abs(across).max() > 8.0  # Å: the arm swings by 50 degrees overall
    # continuous: neighbouring atoms (< 4 Å apart) move by nearly the same amount
    moved = b - a
    near = _pdist(mol.xyz_a[:1500]) < 4.0
    dmove = np.linalg.norm(moved[:1500, None] - moved[None, :1500], axis=-1)
    assert dmove[near].max() < 4.0


def test_twist_rolls_the_arm_rigidly_and_leaves_the_body():
    mol = build_molecule(64, 3.0, seed=0)
    a, b = deform(mol, np.array([[-1.0], [1.0]]), "twist")
    body = np.nonzero((mol.domain == 0) & (mol.xyz_a[:, 0] < -0.01 * 64 * 3.0))[0]  # short of the linker
    assert len(body) > 1000 and np.abs(a[body] - mol.xyz_a[body]).max() < 1e-9
    # beyond the linker the arm turns as a rigid body about an axis parallel to x
    arm = np.nonzero(mol.xyz_a[:, 0] > 0.06 * 64 * 3.0)[0]
    assert np.abs(_pdist(a[arm]) - _pdist(b[arm])).max() < 1e-6
    x_change = np.abs(b[arm, 0] - a[arm, 0]).max()
    assert x_change < 1e-9  # rotation about x: x is kept
    # independent check of the angle: the arm's (y, z) spread turns by 2 * twist_deg
    ya, yb = a[arm, 1:] - a[arm, 1:].mean(0), b[arm, 1:] - b[arm, 1:].mean(0)
    angle = np.degrees(np.arctan2(np.sum(ya[:, 0] * yb[:, 1] - ya[:, 1] * yb[:, 0]), np.sum(ya * yb)))
    assert abs(angle - 2 * mol.twist_deg) < 0.5
    # the linker, between, twists: not rigid
    linker = np.nonzero(mol.domain == 1)[0]
    assert np.abs(_pdist(a[linker]) - _pdist(b[linker])).max() > 1.0
    # the arm moves out of the hinge's plane (z) by several Å: the axis is off its centre line
    assert np.abs(b[arm, 2] - a[arm, 2]).mean() > 3.0


def test_motion_occupancy():
    """The hinge has two preferred states; the twist is uniform on [-1, 1] (molecule.py says why)."""
    from scipy.stats import kstest

    rng = np.random.default_rng(0)
    for motion in ("hinge", "twist", "both"):
        c = sample_motion_coords(rng, 20000, motion)
        assert c.min() >= -1 and c.max() <= 1
        names = {"hinge": ["hinge"], "twist": ["twist"], "both": ["hinge", "twist"]}[motion]
        for j, name in enumerate(names):
            hist, _ = np.histogram(c[:, j], bins=10, range=(-1, 1))
            frac = hist / hist.sum()
            if name == "hinge":
                assert frac.max() > 2.0 * 0.1 and frac.min() < 0.5 * 0.1  # far from flat
            else:
                assert kstest((c[:, j] + 1) / 2, "uniform").pvalue > 1e-3
    both = sample_motion_coords(rng, 20000, "both")
    assert abs(np.corrcoef(both.T)[0, 1]) < 0.03  # drawn independently


def test_average_volume_equals_mean_of_particle_states():
    mol = build_molecule(BOX, APIX, n_atoms=1000, seed=4)
    coords = sample_motion_coords(np.random.default_rng(1), 40, "both")
    exact = sum(render_volume(torch.as_tensor(x, dtype=torch.float32), BOX, APIX, mol.sigma_a)
                for x in deform(mol, coords, "both")) / 40
    binned = _average_volume(mol, coords, "both", BOX, APIX)
    assert _corr(binned, exact) > 0.995
    assert float(binned.sum()) == pytest.approx(float(exact.sum()), rel=1e-3)


def test_dataset_files_and_truth(dataset):
    out, result = dataset
    for name in ("particles.mrcs", "particles.star", "consensus.mrc", "consensus_half1.mrc", "consensus_half2.mrc"):
        assert (out / name).is_file(), name
    truth = json.loads((out / "truth" / "truth.json").read_text())
    coords = np.load(out / "truth" / "coords.npy")
    assert coords.shape == (300, 2) and coords.dtype == np.float32
    assert len(truth["states"]) == 10
    for s in truth["states"]:
        with mrcfile.open(out / "truth" / s["file"]) as m:
            assert m.data.shape == (BOX,) * 3 and float(m.voxel_size.x) == pytest.approx(APIX)
    with mrcfile.open(out / "particles.mrcs") as m:
        assert m.data.shape == (300, BOX, BOX) and float(m.voxel_size.x) == pytest.approx(APIX)
    star = (out / "particles.star").read_text()
    assert "data_optics" in star and "rlnRandomSubset" in star
    assert "Flex" not in star and "coord" not in star.lower()  # no ground truth in the STAR
    assert "consensus vs truth" in result.summary()


def test_star_reads_back_with_true_poses_and_snr(dataset):
    """Re-project the truth at the poses/CTF read from the STAR: the remainder is the noise."""
    from napari_flex3d.io.particles import read_particles

    out, result = dataset
    ps = read_particles(out / "particles.star")
    parts = _draw_particles(300, "both", 3)
    assert np.allclose(ps.rotations, parts.rotations, atol=1e-6)
    assert np.allclose(ps.shifts_a, parts.shifts_a, atol=1e-4)
    assert np.allclose(ps.defocus_u_a, parts.defocus_u_a, atol=1e-2)
    assert abs(int((ps.half_set == 0).sum()) - int((ps.half_set == 1).sum())) <= 1
    assert set(np.unique(ps.half_set)) == {0, 1}
    coords = np.load(out / "truth" / "coords.npy")
    assert np.allclose(coords, parts.coords, atol=1e-6)
    mol = build_molecule(BOX, APIX, n_atoms=N_ATOMS, seed=3)
    clean = simulate_particles(mol, parts, "both", BOX, APIX, 0, 300)
    images = ps.images(np.arange(300))
    noise = images - clean
    snr = clean.var() / noise.var()
    assert snr == pytest.approx(0.5, rel=0.1)
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())


def test_consensus_resembles_truth(dataset):
    out, result = dataset
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["consensus_vs_average_resolution_a"] == pytest.approx(result.consensus_fsc_resolution_a)
    assert result.consensus_fsc_resolution_a < 25.0  # Å; Nyquist is 12 Å
    with mrcfile.open(out / "consensus.mrc") as m:
        cons = m.data.copy()
    with mrcfile.open(out / "truth" / "average.mrc") as m:
        avg = m.data.copy()
    assert _corr(cons, avg) > 0.8


def test_deterministic_for_a_seed(tmp_path):
    args = dict(n_particles=24, box=16, apix=12.0, snr=1.0, motion="twist", n_atoms=300)
    r1 = simulate_dataset(tmp_path / "a", seed=7, **args)
    r2 = simulate_dataset(tmp_path / "b", seed=7, **args)
    r3 = simulate_dataset(tmp_path / "c", seed=8, **args)
    for name in ("particles.mrcs", "consensus.mrc", "truth/average.mrc"):
        with mrcfile.open(r1.out_dir / name) as a, mrcfile.open(r2.out_dir / name) as b:
            assert np.array_equal(a.data, b.data), name
    assert np.array_equal(np.load(r1.truth_dir / "coords.npy"), np.load(r2.truth_dir / "coords.npy"))
    assert (r1.out_dir / "particles.star").read_text().split("\n")[3:] == (
        r2.out_dir / "particles.star").read_text().split("\n")[3:]
    with mrcfile.open(r1.out_dir / "particles.mrcs") as a, mrcfile.open(r3.out_dir / "particles.mrcs") as c:
        assert not np.array_equal(a.data, c.data)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(box=33), "box"),
        (dict(box=8), "box"),
        (dict(snr=0.0), "snr"),
        (dict(snr=-1.0), "snr"),
        (dict(n_particles=1), "n_particles"),
        (dict(motion="wobble"), "motion"),
        (dict(apix=0.0), "apix"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, word):
    args = dict(n_particles=10, box=16, apix=12.0, snr=1.0, motion="hinge", seed=0, n_atoms=300) | kwargs
    with pytest.raises(ValueError, match=word):
        simulate_dataset(tmp_path, **args)


def test_make_sample_writes_a_consensus_map(tmp_path):
    result = make_sample(n_particles=40, box=24, out_dir=tmp_path)
    with mrcfile.open(result.consensus) as m:
        assert m.data.shape == (24, 24, 24)
        assert float(m.voxel_size.x) == pytest.approx(result.apix) == pytest.approx(8.0)


def test_cli_simulate(tmp_path, capsys):
    from napari_flex3d.cli import main

    rc = main(["simulate", "--out", str(tmp_path), "--n-particles", "20", "--box", "16", "--apix", "12",
               "--snr", "1", "--motion", "both", "--seed", "2", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "consensus vs truth" in out and "20 particles" in out
    assert np.load(tmp_path / "truth" / "coords.npy").shape == (20, 2)
    assert main(["simulate", "--out", str(tmp_path), "--box", "15", "--quiet"]) == 2
    capsys.readouterr()
    # --device names where the half maps are reconstructed; a bad one is refused by name
    assert main(["simulate", "--out", str(tmp_path / "d"), "--n-particles", "20", "--box", "16", "--apix", "12",
                 "--device", "gpu", "--quiet"]) == 2
    assert "device 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "d" / "particles.mrcs").exists()
