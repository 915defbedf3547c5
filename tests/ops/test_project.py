"""The reference projector against analytic projections of Gaussian blobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_flex3d.conventions import image_grid_xy_a, voxel_grid_xyz_a
from napari_flex3d.ops.project import project

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_projects_to_analytic_image(device):
    """A 3D Gaussian at r0 projects to sqrt(2 pi) sigma (voxels) times a 2D Gaussian at (A r0)_xy - s."""
    n, apix, sigma_a = 32, 2.0, 4.0
    r0 = np.array([6.0, -4.0, 3.0])  # xyz Å
    xyz = voxel_grid_xyz_a(n, apix, device=device)
    vol = torch.exp(-((xyz - torch.tensor(r0, device=device, dtype=torch.float32)) ** 2).sum(-1) / (2 * sigma_a**2))
    a = Rotation.random(4, random_state=0).as_matrix()
    shifts = np.array([[3.0, -1.0], [0.0, 0.0], [-4.5, 2.5], [1.0, 4.0]])
    img = project(vol, a, torch.tensor(shifts, device=device), apix)
    assert img.shape == (4, n, n) and img.device == vol.device
    xy = image_grid_xy_a(n, apix, dtype=torch.float64)
    for i in range(4):
        c = (a[i] @ r0)[:2] - shifts[i]
        expect = np.sqrt(2 * np.pi) * sigma_a / apix * torch.exp(-((xy - torch.tensor(c)) ** 2).sum(-1) / (2 * sigma_a**2))
        inner = (slice(3, -3), slice(3, -3))  # the shift is periodic: tails wrap at the border
        torch.testing.assert_close(img[i].cpu().double()[inner], expect[inner], atol=5e-3 * expect.max().item(), rtol=0)  # ~0.3% measured


def test_identity_projection_is_sum_along_z():
    """A compact band-limited map seen along z: the sum over z (a voxel-unit line integral)."""
    g = torch.Generator().manual_seed(0)
    n = 32
    vol = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    f = torch.fft.fftfreq(n).abs()
    band = (f[:, None, None] < 0.3) & (f[None, :, None] < 0.3) & (torch.fft.rfftfreq(n)[None, None, :] < 0.3)
    vol = torch.fft.irfftn(torch.fft.rfftn(vol) * band, s=vol.shape)
    vol = vol * (voxel_grid_xyz_a(n, 1.0, dtype=torch.float64).norm(dim=-1) < n / 5)
    img = project(vol, np.eye(3)[None], None, 1.0)[0]
    ref = vol.sum(0)
    corr = ((img - img.mean()) * (ref - ref.mean())).sum() / (img.std() * ref.std() * (n * n - 1))
    assert corr > 0.99
    assert float((img * ref).sum() / (ref * ref).sum()) == pytest.approx(1.0, abs=0.03)


def test_project_differentiable_and_checks_input():
    vol = torch.randn(16, 16, 16, requires_grad=True)
    rot = torch.tensor(Rotation.random(3, random_state=1).as_matrix(), dtype=torch.float32, requires_grad=True)
    shifts = torch.zeros(3, 2, requires_grad=True)
    project(vol, rot, shifts, 1.5).pow(2).sum().backward()
    for t in (vol, rot, shifts):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cubic"):
        project(torch.zeros(8, 8, 9), np.eye(3)[None])
    with pytest.raises(ValueError, match="rotations"):
        project(torch.zeros(8, 8, 8), np.eye(2)[None])
