"""Every convention of napari-flex3d, stated once (the user-facing page is docs/conventions.md).

Layer L0: imports nothing of the package; every other room may import it.

Arrays
    Volumes are ``(d, h, w)`` = ``(z, y, x)``, as ``mrcfile`` returns them; images are
    ``(h, w)``. Box size ``N``, voxel size ``apix`` in Å. Voxel index ``i`` sits at
    ``(i - N // 2) * apix`` Å: the centre of rotation is voxel ``N // 2``.

Points
    Points and vectors are ``(..., 3)`` in ``(x, y, z)`` order, in Å, centred as above.

Poses
    ``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` (RELION's ``Euler_angles2matrix``) maps a map
    point ``r`` to image-frame coordinates ``A r``; a projection integrates over the
    image-frame z. cryoSPARC's ``alignments3D/pose`` ``v`` gives ``A = expm([v]_x)^T``.
    Readers convert both to ``A`` (float64 ``(n, 3, 3)``) and nothing else does.

Shifts
    ``shifts_a`` ``(n, 2)`` = RELION's ``(rlnOriginXAngst, rlnOriginYAngst)``: a map point
    ``r`` appears in the raw particle image at ``(A r)_xy - shift``, measured from pixel
    ``N // 2``. cryoSPARC's ``alignments3D/shift`` (pixels) has the same sign.

CTF
    RELION's: ``CTF(k) = sqrt(1 - w^2) sin(chi) + w cos(chi)``, positive at low
    frequency, multiplying the projection's Fourier transform (see ``ops/ctf.py``).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "centre_index",
    "voxel_grid_xyz_a",
    "image_grid_xy_a",
    "euler_to_matrix",
    "matrix_to_euler",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "cryosparc_pose_to_matrix",
    "matrix_to_cryosparc_pose",
    "electron_wavelength_a",
]


def centre_index(n: int) -> int:
    """Index of the centre voxel/pixel of a box of ``n`` (``n // 2``)."""
    return n // 2


def voxel_grid_xyz_a(n: int, apix: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres of every voxel of an ``n``-box as ``(n, n, n, 3)`` (z, y, x grid; xyz Å)."""
    c = (torch.arange(n, device=device, dtype=dtype) - n // 2) * apix  # (n,)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([x, y, z], dim=-1)  # (n, n, n, 3) xyz


def image_grid_xy_a(n: int, apix: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres of every pixel of an ``n``-image as ``(n, n, 2)`` (y, x grid; xy Å)."""
    c = (torch.arange(n, device=device, dtype=dtype) - n // 2) * apix
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], dim=-1)


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _ry(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def euler_to_matrix(rot_deg, tilt_deg, psi_deg) -> np.ndarray:
    """RELION's ``A = Rz(psi) Ry(tilt) Rz(rot)``; angles in degrees, any shape ``(...)``.

    Returns ``(..., 3, 3)`` float64. Equals RELION's ``Euler_angles2matrix``: written out,
    ``A[0] = [ca*cb*cg - sa*sg, ...]`` is what this product gives with the passive
    (coordinate-frame) sign convention RELION uses, i.e. ``Rz(a)`` here is the transpose
    of the active rotation. See ``tests/test_conventions.py`` for the check against
    RELION's own projections.
    """
    rot, tilt, psi = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (rot_deg, tilt_deg, psi_deg))
    # RELION's matrix is the product of passive rotations: Rz_p(psi) Ry_p(tilt) Rz_p(rot),
    # with Rz_p(a) = Rz(a)^T = Rz(-a) and Ry_p(b) = Ry(b)^T = Ry(-b).
    return _rz(-psi) @ _ry(-tilt) @ _rz(-rot)


def matrix_to_euler(a: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix`: ``(..., 3, 3) -> (..., 3)`` (rot, tilt, psi) degrees.

    Follows RELION's ``Euler_matrix2angles`` (tilt in [0, 180]).
    """
    a = np.asarray(a, dtype=np.float64)
    abs_sb = np.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    gimbal = abs_sb <= 16 * np.finfo(np.float64).eps
    tilt = np.arctan2(abs_sb, a[..., 2, 2])
    rot = np.where(gimbal, 0.0, np.arctan2(a[..., 2, 1], a[..., 2, 0]))
    psi = np.where(gimbal, np.arctan2(-a[..., 1, 0], a[..., 0, 0]), np.arctan2(a[..., 1, 2], -a[..., 0, 2]))
    tilt = np.where(gimbal, np.where(np.sign(a[..., 2, 2]) > 0, 0.0, np.pi), tilt)
    psi = np.where(gimbal & (np.sign(a[..., 2, 2]) < 0), np.arctan2(a[..., 1, 0], -a[..., 0, 0]), psi)
    return np.rad2deg(np.stack([rot, tilt, psi], axis=-1))


def axis_angle_to_matrix(v) -> np.ndarray:
    """Rodrigues: rotation vector ``(..., 3)`` (axis * angle, rad) -> active ``(..., 3, 3)``."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1, keepdims=True)  # (..., 1)
    k = np.where(theta > 1e-12, v / np.where(theta > 1e-12, theta, 1.0), 0.0)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    kmat = np.stack([np.stack([zero, -kz, ky], -1), np.stack([kz, zero, -kx], -1), np.stack([-ky, kx, zero], -1)], -2)
    t = theta[..., None]  # (..., 1, 1)
    eye = np.broadcast_to(np.eye(3), kmat.shape)
    return eye + np.sin(t) * kmat + (1 - np.cos(t)) * (kmat @ kmat)


def matrix_to_axis_angle(r) -> np.ndarray:
    """Inverse of :func:`axis_angle_to_matrix` (angle in [0, pi])."""
    from scipy.spatial.transform import Rotation

    r = np.asarray(r, dtype=np.float64)
    flat = r.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(r.shape[:-2] + (3,))


def cryosparc_pose_to_matrix(pose) -> np.ndarray:
    """cryoSPARC ``alignments3D/pose`` ``(..., 3)`` -> our ``A = expm([pose]_x)^T``."""
    return np.swapaxes(axis_angle_to_matrix(pose), -1, -2)


def matrix_to_cryosparc_pose(a) -> np.ndarray:
    """Our ``A (..., 3, 3)`` -> cryoSPARC's rotation vector (inverse of the above)."""
    return matrix_to_axis_angle(np.swapaxes(np.asarray(a, dtype=np.float64), -1, -2))


def electron_wavelength_a(voltage_kv):
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2642598 / np.sqrt(v * (1 + 0.978466e-6 * v))
