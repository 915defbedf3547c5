"""The conventions (docs/conventions.md) checked against RELION's own projections and cryoSPARC/cryoDRGN.

The oracle: ``relion_project --pad 2 --ctf`` projected ``pointmass.mrc`` (one voxel,
17 voxels along +x from the centre) at the poses, shifts and CTFs of
``relion_proj_batch_pfac2.star``. Our projector + CTF with exactly the conventions of
``conventions.py`` must correlate >= 0.85 with every image; flipping the CTF sign,
transposing ``A`` or flipping the shift sign must be clearly worse.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.spatial.transform import Rotation

from napari_flex3d.conventions import (
    cryosparc_pose_to_matrix,
    euler_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_euler,
    voxel_grid_xyz_a,
)
from napari_flex3d.io.mrc import read_map
from napari_flex3d.io.particles import read_particles, write_cs
from napari_flex3d.ops.ctf import apply_ctf, particle_ctf
from napari_flex3d.ops.fourier import shift_images
from napari_flex3d.ops.project import project

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

RELION_STAR = "simplecryoem/relion_proj_batch_pfac2.star"
POINTMASS = "simplecryoem/pointmass.mrc"
CS_FILE = "cryodrgn/cryosparc_P12_J24_001_particles.cs"

# README row 0 of cryosparc_P12_J24_001_particles.cs: R = exp([v]x)
CS_ROW0_POSE = np.array([2.3386633, -0.25595567, -1.2236784])
CS_ROW0_R = np.array(
    [[0.58163, 0.05683, -0.81147], [-0.37730, -0.86491, -0.33101], [-0.72066, 0.49870, -0.48162]]
)
CS_ROW0_SHIFT_PX = np.array([11.334375, -1.828125])


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image, ``(b, h, w) x (b, h, w) -> (b,)``."""
    a = a - a.mean((-2, -1), keepdim=True)
    b = b - b.mean((-2, -1), keepdim=True)
    return (a * b).sum((-2, -1)) / torch.sqrt((a * a).sum((-2, -1)) * (b * b).sum((-2, -1)))


def _model(ps, volume, rotations, shifts_a, sign=1.0):
    ctf = particle_ctf(ps, device=volume.device)
    ctf = ctf.repeat(rotations.shape[0] // ctf.shape[0], 1, 1)
    return apply_ctf(project(volume, rotations, shifts_a, ps.apix), sign * ctf)


@pytest.fixture(scope="module")
def relion_oracle(formats_dir):
    ps = read_particles(formats_dir / RELION_STAR)
    vol = read_map(formats_dir / POINTMASS).data
    return ps, np.array(vol, dtype=np.float32), ps.images(np.arange(len(ps)))


@pytest.mark.parametrize("device", DEVICES)
def test_relion_projection_oracle(relion_oracle, device):
    ps, vol, images = relion_oracle
    vol = torch.from_numpy(vol).to(device)
    images = torch.from_numpy(images).to(device)
    a = torch.from_numpy(ps.rotations)
    shifts = torch.from_numpy(ps.shifts_a).to(device)
    ctf = particle_ctf(ps, device=device)
    n = len(ps)
    both = project(vol, torch.cat([a, a.transpose(-1, -2)]), None, ps.apix)  # (2b, h, w), one volume FFT
    centred, centred_t = both[:n], both[n:]  # shifts applied below
    variants = {
        "correct": apply_ctf(shift_images(centred, -shifts, ps.apix), ctf),
        "ctf_flipped": apply_ctf(shift_images(centred, -shifts, ps.apix), -ctf),
        "a_transposed": apply_ctf(shift_images(centred_t, -shifts, ps.apix), ctf),
        "shift_flipped": apply_ctf(shift_images(centred, shifts, ps.apix), ctf),
    }
    corr = {k: _corr(v, images).cpu() for k, v in variants.items()}
    for k, c in corr.items():
        print(f"RELION pad2 {k}: mean {c.mean():.3f} min {c.min():.3f} max {c.max():.3f}")
    assert corr["correct"].min() >= 0.85
    assert corr["ctf_flipped"].mean() < -0.5
    assert corr["a_transposed"].mean() < 0.3
    assert corr["shift_flipped"].mean() < 0.3


def test_relion_oracle_through_cs_file(relion_oracle, tmp_path):
    """The same oracle after writing the poses as a cryoSPARC ``.cs`` and reading it back.

    Also reads the pose vectors back by hand with cryoDRGN's rule ``A = expm([v]x)^T``
    (scipy's expm, independent of our code); ``A = expm([v]x)`` (no transpose) fails.
    """
    ps, vol, images = relion_oracle
    path = write_cs(ps, tmp_path / "oracle.cs")
    cs = read_particles(path)
    np.testing.assert_allclose(cs.rotations, ps.rotations, atol=1e-5)
    np.testing.assert_allclose(cs.shifts_a, ps.shifts_a, atol=1e-4)
    rec = np.load(path, allow_pickle=False)
    poses = np.asarray(rec["alignments3D/pose"], dtype=np.float64)
    shift_px = np.asarray(rec["alignments3D/shift"], dtype=np.float64)
    a_drgn = np.stack([expm(_skew(v)).T for v in poses])
    vol = torch.from_numpy(vol)
    images = torch.from_numpy(images)
    shifts = torch.from_numpy(shift_px * ps.apix)
    both = _model(ps, vol, torch.from_numpy(np.concatenate([a_drgn, np.swapaxes(a_drgn, -1, -2)])),
                  torch.cat([shifts, shifts]))  # (2b, h, w): rows 0..b-1 correct, b.. untransposed expm
    c_ok, c_bad = _corr(both[: len(ps)], images), _corr(both[len(ps) :], images)
    print(f"cryoSPARC route correct: mean {c_ok.mean():.3f} min {c_ok.min():.3f}")
    print(f"cryoSPARC route expm not transposed: mean {c_bad.mean():.3f} min {c_bad.min():.3f}")
    assert c_ok.min() >= 0.85
    assert c_bad.mean() < 0.3


def _skew(v):
    x, y, z = v
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def _cryodrgn_r_from_relion(rot, tilt, psi):
    """cryoDRGN's ``utils.R_from_relion``, written out from its source (an independent oracle)."""
    a, b, y = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cy, sy = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(y), np.sin(y)
    ra = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    rb = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    ry = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    r = ry @ rb @ ra
    r[0, 1] *= -1
    r[1, 0] *= -1
    r[1, 2] *= -1
    r[2, 1] *= -1
    return r


def _relion_euler_angles2matrix(rot, tilt, psi):
    """RELION's ``Euler_angles2matrix`` element by element."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ]
    )


def test_euler_matrix_matches_relion_and_cryodrgn():
    rng = np.random.default_rng(0)
    angles = np.stack([rng.uniform(-180, 180, 50), rng.uniform(0, 180, 50), rng.uniform(-180, 180, 50)], -1)
    ours = euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    for e, a in zip(angles, ours):
        np.testing.assert_allclose(a, _relion_euler_angles2matrix(*e), atol=1e-12)
        np.testing.assert_allclose(a, _cryodrgn_r_from_relion(*e), atol=1e-12)
    # torch-fourier-slice's R = scipy ZYZ(rot, tilt, psi) is A^T
    r = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()
    np.testing.assert_allclose(np.swapaxes(r, -1, -2), ours, atol=1e-12)


def test_euler_round_trip():
    rng = np.random.default_rng(1)
    a = Rotation.random(200, random_state=2).as_matrix()
    e = matrix_to_euler(a)
    np.testing.assert_allclose(euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]), a, atol=1e-10)
    angles = np.stack([rng.uniform(-180, 180, 100), rng.uniform(1, 179, 100), rng.uniform(-180, 180, 100)], -1)
    back = matrix_to_euler(euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    np.testing.assert_allclose(back, angles, atol=1e-8)
    # gimbal lock: tilt 0 and 180 still give back the same matrix
    for tilt in (0.0, 180.0):
        m = euler_to_matrix(30.0, tilt, 40.0)
        e = matrix_to_euler(m)
        np.testing.assert_allclose(euler_to_matrix(*e), m, atol=1e-10)


def test_cryosparc_row0_pose(formats_dir):
    """README row 0: R = expm([v]x) as printed; our A = R^T, from the helper and the reader."""
    np.testing.assert_allclose(expm(_skew(CS_ROW0_POSE)), CS_ROW0_R, atol=1e-5)
    a = cryosparc_pose_to_matrix(CS_ROW0_POSE)
    np.testing.assert_allclose(a, CS_ROW0_R.T, atol=1e-5)
    np.testing.assert_allclose(matrix_to_cryosparc_pose(a), CS_ROW0_POSE, atol=1e-6)
    cs = read_particles(formats_dir / CS_FILE)
    np.testing.assert_allclose(cs.rotations[0], CS_ROW0_R.T, atol=1e-5)
    np.testing.assert_allclose(cs.shifts_a[0], CS_ROW0_SHIFT_PX * 2.95, rtol=1e-5)


def test_cryosparc_poses_project_like_their_euler_angles(formats_dir):
    """A from the .cs poses vs the RELION Euler angles of the same A: identical projections.

    Also ``A`` equals cryoDRGN's ``expm(v)^T`` for every row, and ``A^T`` projects the
    off-centre point mass elsewhere.
    """
    cs = read_particles(formats_dir / CS_FILE)
    rec = np.load(formats_dir / CS_FILE, allow_pickle=False)
    sel = np.arange(0, len(cs), 97)  # 21 rows spread over the file
    poses = np.asarray(rec["alignments3D/pose"][sel], dtype=np.float64)
    a_drgn = np.stack([expm(_skew(v)).T for v in poses])
    np.testing.assert_allclose(cs.rotations[sel], a_drgn, atol=1e-5)
    n, apix = 48, 3.0
    vol = torch.zeros(n, n, n)
    vol[n // 2 + 3, n // 2 - 5, n // 2 + 11] = 1.0  # off-centre point (z, y, x)
    a = cs.rotations[sel]
    e = matrix_to_euler(a)
    via_euler = euler_to_matrix(e[:, 0], e[:, 1], e[:, 2])
    shifts = torch.from_numpy(cs.shifts_a[sel] / 2.95 * apix)
    k = len(sel)
    stacked = np.concatenate([a, via_euler, np.swapaxes(a, -1, -2)])  # (3k, 3, 3)
    p = project(vol, stacked, torch.cat([shifts] * 3), apix, pad_factor=1.0)  # (3k, n, n)
    p_cs, p_eu, p_t = p[:k], p[k : 2 * k], p[2 * k :]
    c_eu, c_t = _corr(p_cs, p_eu), _corr(p_cs, p_t)
    print(f"cryoSPARC .cs A vs Euler(A): mean {c_eu.mean():.4f} min {c_eu.min():.4f}")
    print(f"cryoSPARC .cs A vs A^T: mean {c_t.mean():.4f} min {c_t.min():.4f}")
    assert c_eu.min() > 0.999
    assert c_t.mean() < 0.3


def test_point_lands_at_a_r_minus_shift():
    """A voxel at r appears at pixel N//2 + ((A r)_xy - shift) / apix (no CTF)."""
    n, apix = 32, 2.0
    r_vox = np.array([5.0, -3.0, 2.0])  # xyz voxels from the centre
    vol = torch.zeros(n, n, n)
    vol[n // 2 + 2, n // 2 - 3, n // 2 + 5] = 1.0
    a = Rotation.random(6, random_state=3).as_matrix()
    shifts_a = np.array([[2.0, -4.0]] * 6)
    img = project(vol, a, torch.from_numpy(shifts_a), apix)
    for i in range(6):
        expect = (a[i] @ r_vox)[:2] - shifts_a[i] / apix + n // 2  # (x, y) pixels
        # centroid of the (band-limited) spot in a small window
        y0, x0 = np.round(expect[::-1]).astype(int)
        win = img[i, y0 - 3 : y0 + 4, x0 - 3 : x0 + 4].clamp(min=0)
        yy, xx = torch.meshgrid(torch.arange(y0 - 3, y0 + 4.0), torch.arange(x0 - 3, x0 + 4.0), indexing="ij")
        got = np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
        np.testing.assert_allclose(got, expect, atol=0.35)


def test_voxel_grid_centre():
    g = voxel_grid_xyz_a(5, 2.0)
    np.testing.assert_allclose(g[2, 2, 2].numpy(), [0, 0, 0])
    np.testing.assert_allclose(g[1, 2, 3].numpy(), [2.0, 0.0, -2.0])
