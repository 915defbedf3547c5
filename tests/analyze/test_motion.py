"""Strain is zero for any rigid motion, however large, and large where a simulated hinge bends."""

from __future__ import annotations

import numpy as np
import torch

from napari_flex3d.analyze.motion import axis_end_latents, cell_strain, region_table, vertex_displacement, voxel_cells
from napari_flex3d.mesh.build import build_grid_mesh

BOX, APIX = 24, 4.0


def _mesh():
    mask = np.zeros((BOX,) * 3, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    return build_grid_mesh(mask, APIX, cell_size_a=8.0)


def _rotation(axis, angle_deg):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.deg2rad(angle_deg) * np.asarray(axis, float)).as_matrix()


def test_rigid_motion_has_no_strain():
    mesh = _mesh()
    x = mesh.vertices_a
    r, t = _rotation([1, 2, 3] / np.linalg.norm([1, 2, 3]), 40.0), np.array([5.0, -3.0, 2.0])
    start = x @ _rotation([0, 0, 1], 10.0).T - x  # a rigid start state, not the rest one
    end = x @ r.T + t - x
    strain = cell_strain(torch.as_tensor(x), torch.as_tensor(mesh.cells), torch.as_tensor(start), torch.as_tensor(end))
    assert strain.shape == (mesh.n_cells,)
    assert float(strain.abs().max()) < 1e-9
    assert float(vertex_displacement(torch.as_tensor(start), torch.as_tensor(end)).max()) > 10.0  # yet it moved a lot


def test_hinge_strain_sits_at_the_hinge():
    mesh = _mesh()
    x = mesh.vertices_a
    arm = x[:, 0] > 0  # the arm (x > 0) swings 30 degrees about the y axis; the body stays
    moved = x.copy()
    moved[arm] = x[arm] @ _rotation([0, 1, 0], 30.0).T
    strain = cell_strain(torch.as_tensor(x), torch.as_tensor(mesh.cells), torch.zeros_like(torch.as_tensor(x)),
                         torch.as_tensor(moved - x)).numpy()
    centroid_x = x[mesh.cells].mean(1)[:, 0]
    straddles = arm[mesh.cells].any(1) & ~arm[mesh.cells].all(1)
    assert strain[straddles].mean() > 0.1  # cells across the hinge bend
    assert np.abs(strain[~straddles]).max() < 1e-9  # cells wholly in the body or the arm move rigidly
    assert np.all(np.abs(centroid_x[straddles]) < 8.0)


def test_voxel_cells_and_region_table():
    mesh = _mesh()
    pts = np.array([[0.0, 0.0, 0.0], [200.0, 0.0, 0.0]])
    cells = voxel_cells(mesh.vertices_a, mesh.cells, pts, BOX, APIX)
    assert cells[0] >= 0 and cells[1] == -1
    labels = np.zeros((BOX,) * 3, np.int16)
    labels[:, :, BOX // 2 :] = 2  # x >= 0: region 2 (arrays are z, y, x)
    labels[:, :, : BOX // 2] = 1
    xyz = np.array([[-8.0, 0, 0], [-4.0, 0, 0], [4.0, 0, 0], [8.0, 4.0, 0]])
    disp = np.array([[1.0, 1.0, 3.0, 5.0]])  # (K=1, 4 voxels)
    table = region_table(disp, xyz, labels, APIX)
    assert table["region"].tolist() == [1, 2]
    np.testing.assert_allclose(table["mean_a"], [1.0, 4.0])
    np.testing.assert_allclose(table["max_a"], [1.0, 5.0])


def test_axis_ends_span_three_sd():
    z = np.random.default_rng(0).normal(size=(1000, 2)) * [2.0, 1.0]
    ends = axis_end_latents(z, 0)
    np.testing.assert_allclose(ends[1, 0] - ends[0, 0], 3.0 * z[:, 0].std(ddof=1))
    np.testing.assert_allclose(ends[:, 1], z[:, 1].mean())


def test_axis_motion_of_a_translating_flow():
    """A flow ``f(z) = z * shift`` at every vertex: the ends of the axis are 3 sd apart, so every
    mask voxel moves ``3 sd |shift|`` Å, rigidly (strain 0), and the maps hold that on the mask."""
    from napari_flex3d.analyze.motion import axis_motion
    from napari_flex3d.model.flex import FlexModel

    mesh_mask = np.zeros((BOX,) * 3, bool)
    mesh_mask[4:-4, 4:-4, 4:-4] = True
    mesh = build_grid_mesh(mesh_mask, APIX, cell_size_a=16.0)
    c = (np.arange(BOX) - BOX // 2) * APIX
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    blob = np.exp(-(xx**2 + yy**2 + zz**2) / (2 * 10.0**2)).astype(np.float32)
    model = FlexModel.from_map(blob, APIX, mesh, mesh_mask, latent_dim=1, hidden=2, layers=1, kernel="linear")
    shift = torch.tensor([3.0, -2.0, 1.0])
    with torch.no_grad():  # hidden = relu(z + 10), relu(10); out = shift * (h0 - h1) = shift * z
        model.flow.hidden[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model.flow.hidden[0].bias.copy_(torch.tensor([10.0, 10.0]))
        w = torch.zeros(model.flow.n_vertices, 3, 2)
        w[:, :, 0], w[:, :, 1] = shift, -shift
        model.flow.out.weight.copy_(w.reshape(-1, 2))
    latents = np.random.default_rng(0).normal(0.2, 0.5, size=(500, 1))
    expected = 3.0 * latents[:, 0].std(ddof=1) * float(torch.linalg.vector_norm(shift))
    motion = axis_motion(model, latents)
    np.testing.assert_allclose(motion["vertex_displacement_a"], expected, rtol=1e-4)
    np.testing.assert_allclose(motion["voxel_displacement_a"], expected, rtol=1e-4)
    assert np.abs(motion["cell_strain"]).max() < 1e-5
    vol = motion["displacement_maps_a"][0]
    inside = model.canonical.to_volume(torch.ones_like(model.canonical.values)).numpy() > 0
    np.testing.assert_allclose(vol[inside], expected, rtol=1e-4)
    assert np.all(vol[~inside] == 0) and vol.shape == (BOX,) * 3
