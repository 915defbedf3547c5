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


def _linear_flow_model(field_fn):
    """A K=1 model whose flow is ``z * field_fn(rest vertices)`` (Å), on a grid mesh of the cube mask."""
    from napari_flex3d.model.flex import FlexModel

    mesh_mask = np.zeros((BOX,) * 3, bool)
    mesh_mask[4:-4, 4:-4, 4:-4] = True
    mesh = build_grid_mesh(mesh_mask, APIX, cell_size_a=16.0)
    blob = np.ones((BOX,) * 3, np.float32)
    model = FlexModel.from_map(blob, APIX, mesh, mesh_mask, latent_dim=1, hidden=2, layers=1, kernel="linear")
    field = torch.as_tensor(field_fn(mesh.vertices_a), dtype=torch.float32)  # (v, 3)
    with torch.no_grad():  # hidden = relu(z + 10), relu(10); out = field * (h0 - h1) = z * field
        model.flow.hidden[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model.flow.hidden[0].bias.copy_(torch.tensor([10.0, 10.0]))
        w = torch.zeros(model.flow.n_vertices, 3, 2)
        w[:, :, 0], w[:, :, 1] = field, -field
        model.flow.out.weight.copy_(w.reshape(-1, 2))
    return model


def test_axis_motion_of_a_translating_flow():
    """A flow ``f(z) = z * shift`` at every vertex: the ends of the axis are 3 sd apart, so every
    mask voxel moves ``3 sd |shift|`` Å, rigidly (strain 0), and the maps hold that on the mask."""
    from napari_flex3d.analyze.motion import axis_motion

    shift = torch.tensor([3.0, -2.0, 1.0])
    model = _linear_flow_model(lambda x: np.tile(shift.numpy(), (len(x), 1)))
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


def test_path_motion_ends_are_axis_motion_and_points_follow_the_flow():
    from napari_flex3d.analyze.motion import axis_motion, boundary_surface, path_motion, point_motion

    def stretch(x):  # a uniform 10 % stretch along x per latent unit: strain |z1 - z0| * 0.1 / (1 + z0 * 0.1)
        return np.column_stack([0.1 * x[:, 0], np.zeros(len(x)), np.zeros(len(x))])

    model = _linear_flow_model(stretch)
    latents = np.random.default_rng(1).normal(0.0, 1.0, size=(300, 1))
    ends = axis_end_latents(latents, 0)
    zs = np.linspace(ends[0], ends[1], 4)  # (4, 1)
    path = path_motion(model, zs)
    axis = axis_motion(model, latents)
    for key in axis:
        np.testing.assert_allclose(path[key][-1], axis[key][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path["cell_strain"][0], 0.0, atol=1e-7)  # the reference frame
    expected = np.abs(zs[:, 0] - zs[0, 0]) * 0.1 / (1 + 0.1 * zs[0, 0])  # (4,) the same in every cell
    np.testing.assert_allclose(path["cell_strain"], np.repeat(expected[:, None], model.cells.shape[0], 1), rtol=1e-4,
                               atol=1e-6)

    pts = np.array([[-10.0, 3.0, 2.0], [20.0, -5.0, 0.0]])
    moved, disp = point_motion(model, pts, [2.0], [0.5])
    np.testing.assert_allclose(moved, pts + 2.0 * stretch(pts), atol=1e-4)
    np.testing.assert_allclose(disp, np.abs(1.5 * 0.1 * pts[:, 0]), atol=1e-4)

    verts, faces = boundary_surface(model, [1.0])
    rest = model.vertices_a.double().numpy()
    np.testing.assert_allclose(verts, rest + stretch(rest), atol=1e-4)
    used = np.unique(faces)
    on_box = np.isclose(np.abs(rest[used]).max(1), np.abs(rest).max())  # every used vertex is on the cube's faces
    assert on_box.all() and len(faces) > 0
