"""Local rigidity prior on the mesh, its per-cell weights, and priors painted by the user.

A room of ``mesh``; it imports ``config``, :mod:`.mesh` and :mod:`.strain`.

For cell ``j`` with rest edge matrix ``D_j = [x1 - x0, x2 - x0, x3 - x0]`` (columns) and
moved edges ``D'_j``, the deformation gradient is ``F = D'_j D_j^-1``, and (paper eq. 5)

    E_rigid = sum_j w_j sum_l (s_l(F_j) - 1)^2

with ``s_l`` the singular values of ``F``. Singular values are blind to inversion, so the
sign of ``det F`` is carried onto the smallest one: a cell turned inside out costs at least 4.

No SVD is taken (a batched 3 x 3 SVD was 62% of an H100's time in a training step, and
0.3 s of a 1.7 s CPU step), and no iteration: :mod:`.strain` finds the singular values in
closed form (the trigonometric solution of ``F^T F``'s characteristic cubic, with the
strains ``s - 1`` formed without cancellation) in about 60 elementwise operations for a
whole batch of cells, in float64, and writes out the gradient (``sum_l (s^_l - 1)^2 =
|F|^2 - 2 p + 3`` with ``p = s1 + s2 + sign(det F) s3 = max_R tr(R^T F)``, whose gradient is
the polar rotation of ``F``: exactly zero at ``F = I``; not unique where a cell collapses or
is inverted with ``s2 = s3``). The energy's backward pass keeps only its gradient with respect
to ``F``, made in the forward pass.

``w_j`` is the cell's mean canonical density scaled so the densest cell is 1, floored at
a minimum (cryoSPARC: 0.5), then raised for cells the user marked rigid.

Scale. The paper's sum over cells, with no volume factor, counts a strain once per cell: the
same physical deformation costs about ``(cell size)^-3`` times more on a finer mesh (8x at
half the cell size), and the default mesh's cells follow the box (20 across, at least 4
voxels), so one weight meant different priors at boxes 32, 64 and 128 of the same particles.
Training's ``volume`` scale (``TrainConfig.rigidity_scale``, the default) multiplies ``w_j``
by :func:`cell_volume_factors`, ``V_j / V_ref`` (``config.RIGIDITY_REFERENCE_VOLUME_A3``):
the energy becomes ``(1/V_ref) * integral of w * strain dV``, the same on any mesh covering
the same density (``tests/mesh/test_rigidity_scale.py``), and equal to the per-cell sum on a
mesh of ``V_ref``-sized cells. The weights a run trains with are saved in its checkpoint,
so runs from before keep their per-cell sum. A per-vertex
motion mask ``m`` (0 where motion is forbidden, e.g. a micelle) comes from a label
volume the user paints.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..config import RIGIDITY_FLOOR, RIGIDITY_REFERENCE_VOLUME_A3
from .mesh import Mesh, cell_signed_volumes
from .strain import displacement_strain_energy, rotation_trace, strain_operator

__all__ = [
    "edge_matrices",
    "rest_edge_inverse",
    "deformation_gradients",
    "signed_singular_values",
    "rotation_trace",
    "rigidity_energy",
    "RigidityPrior",
    "cell_sample_points",
    "cell_density_weights",
    "cell_volume_factors",
    "raise_rigid_cells",
    "motion_mask_from_labels",
]


# ----------------------------------------------------------------------------- energy


def edge_matrices(vertices: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Edge matrices ``(..., t, 3, 3)`` whose columns are ``x1 - x0, x2 - x0, x3 - x0``.

    Args:
        vertices: ``(..., v, 3)`` xyz. ``cells``: ``(t, 4)`` int64.
    """
    x = vertices[..., cells, :]  # (..., t, 4, 3)
    return (x[..., 1:, :] - x[..., :1, :]).transpose(-1, -2)  # (..., t, 3, 3) columns = edges


def rest_edge_inverse(rest_vertices: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``D^-1`` ``(t, 3, 3)`` of every cell at rest, computed in float64 on the CPU and returned
    in the input's dtype and on its device."""
    D = edge_matrices(rest_vertices.detach().to("cpu", torch.float64), cells.to("cpu"))  # (t, 3, 3)
    det = torch.linalg.det(D)
    degenerate = det.abs() <= 1e-12 * D.abs().amax(dim=(-1, -2)) ** 3
    if bool(degenerate.any()):
        first = int(degenerate.nonzero()[0, 0])
        raise ValueError(f"{int(degenerate.sum())} cells are degenerate (zero volume), e.g. cell {first}")
    return torch.linalg.inv(D).to(device=rest_vertices.device, dtype=rest_vertices.dtype)


def deformation_gradients(rest_inv: torch.Tensor, displacements: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """``F = D' D^-1 = I + dD D^-1`` ``(b, t, 3, 3)`` for vertex ``displacements (b, v, 3)``."""
    dD = edge_matrices(displacements, cells)  # (b, t, 3, 3) edge changes
    eye = torch.eye(3, dtype=displacements.dtype, device=displacements.device)
    return eye + dD @ rest_inv.to(displacements)  # (b, t, 3, 3)


def signed_singular_values(F: torch.Tensor) -> torch.Tensor:
    """Singular values ``(..., 3)`` of ``F (..., 3, 3)``, descending, the smallest carrying ``sign(det F)``."""
    s = torch.linalg.svdvals(F)  # (..., 3) descending
    negative = torch.linalg.det(F).detach() < 0
    last = torch.where(negative, -s[..., 2], s[..., 2])
    return torch.cat([s[..., :2], last.unsqueeze(-1)], dim=-1)


def rigidity_energy(
    rest_vertices: torch.Tensor,
    displacements: torch.Tensor,
    cells: torch.Tensor,
    weights: torch.Tensor | None = None,
    rest_inv: torch.Tensor | None = None,
) -> torch.Tensor:
    """Local rigidity energy ``sum_j w_j sum_l (s_l(F_j) - 1)^2`` per batch item.

    Args:
        rest_vertices: ``(v, 3)`` rest positions, xyz Å.
        displacements: ``(b, v, 3)`` (or ``(v, 3)``) vertex displacements, Å.
        cells: ``(t, 4)`` int64.
        weights: ``(t,)`` per-cell weights ``w_j`` (``None``: all 1).
        rest_inv: precomputed ``(t, 3, 3)`` ``D^-1`` (:func:`rest_edge_inverse`), to skip
            recomputing it.

    Returns:
        ``(b,)`` (or a scalar for unbatched ``displacements``), differentiable in
        ``displacements``.
    """
    cells = torch.as_tensor(cells, dtype=torch.int64, device=displacements.device)
    unbatched = displacements.dim() == 2
    disp = displacements.unsqueeze(0) if unbatched else displacements
    if disp.dim() != 3 or disp.shape[-1] != 3 or disp.shape[-2] != rest_vertices.shape[0]:
        raise ValueError(
            f"displacements must be (b, {rest_vertices.shape[0]}, 3), got {tuple(displacements.shape)}"
        )
    if rest_inv is None:
        rest_inv = rest_edge_inverse(torch.as_tensor(rest_vertices, device=disp.device), cells)
    energy = _energy(rest_inv, disp, cells, weights)
    return energy[0] if unbatched else energy


#: Largest ``(b, t, 3, 3)`` float64 temporary of one piece of the batch (bytes). The energy's
#: forward and backward passes each hold several such tensors at once; pieces keep that
#: transient small while only ``G`` of the whole batch is kept for the backward pass.
_CHUNK_BYTES = 1 << 27


def _energy(rest_inv: torch.Tensor, disp: torch.Tensor, cells: torch.Tensor, weights) -> torch.Tensor:
    """``(b,)`` energy of ``disp (b, v, 3)`` given ``D^-1 (t, 3, 3)`` (no SVD, see the module notes),
    in pieces of the batch of at most ``_CHUNK_BYTES`` per ``(b, t, 3, 3)`` float64 tensor."""
    op = strain_operator(rest_inv, cells, disp.shape[1])  # F - I of every cell as one sparse product, made once
    w = None if weights is None else torch.as_tensor(weights, device=disp.device)
    step = max(1, _CHUNK_BYTES // (72 * max(1, cells.shape[0])))
    if disp.shape[0] <= step:
        return displacement_strain_energy(disp, op, w)  # (b,)
    out = [displacement_strain_energy(disp[k : k + step], op, w) for k in range(0, disp.shape[0], step)]
    return torch.cat(out)  # (b,)


class RigidityPrior(torch.nn.Module):
    """Holds ``D^-1``, the cells and the weights of a mesh; ``forward(displacements)`` gives ``(b,)``.

    Args:
        rest_vertices: ``(v, 3)`` xyz Å. ``cells``: ``(t, 4)``. ``weights``: ``(t,)`` or None.
        dtype: of the stored ``D^-1`` and weights (moves with ``.to(device)``).
    """

    def __init__(self, rest_vertices, cells, weights=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        rest = torch.as_tensor(np.asarray(rest_vertices) if not torch.is_tensor(rest_vertices) else rest_vertices)
        cells_t = torch.as_tensor(np.asarray(cells) if not torch.is_tensor(cells) else cells, dtype=torch.int64)
        self.register_buffer("cells", cells_t)
        self.register_buffer("rest_inv", rest_edge_inverse(rest.to(torch.float64), cells_t).to(dtype))
        w = torch.ones(len(cells_t)) if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if w.shape != (len(cells_t),):
            raise ValueError(f"weights must be ({len(cells_t)},), got {tuple(w.shape)}")
        self.register_buffer("weights", w.to(dtype))
        self.n_vertices = int(rest.shape[0])

    @classmethod
    def from_mesh(cls, mesh: Mesh, dtype: torch.dtype = torch.float32) -> "RigidityPrior":
        """From a :class:`Mesh`, using its ``rigidity_weights`` (all 1 when unset)."""
        return cls(mesh.vertices_a, mesh.cells, mesh.rigidity_weights, dtype=dtype)

    def forward(self, displacements: torch.Tensor) -> torch.Tensor:
        if displacements.shape[-2] != self.n_vertices:
            raise ValueError(f"displacements have {displacements.shape[-2]} vertices, mesh has {self.n_vertices}")
        unbatched = displacements.dim() == 2
        disp = displacements.unsqueeze(0) if unbatched else displacements
        energy = _energy(self.rest_inv, disp, self.cells, self.weights)  # (b,)
        return energy[0] if unbatched else energy


# ----------------------------------------------------------------------------- weights


def _lattice(order: int) -> np.ndarray:
    """Barycentric points ``(p, 4)``: the lattice ``i + j + k + l = order - 1`` shifted inward by 1/4 and
    normalised, so every coordinate is positive; ``p = order (order + 1) (order + 2) / 6``."""
    pts = []
    for i in range(order):
        for j in range(order - i):
            for k in range(order - i - j):
                l_ = order - 1 - i - j - k
                pts.append([i, j, k, l_])
    bary = np.asarray(pts, dtype=np.float64) + 0.25  # interior: every coordinate > 0
    return bary / bary.sum(1, keepdims=True)


def cell_sample_points(mesh: Mesh, order: int = 4) -> np.ndarray:
    """``(t, p, 3)`` xyz Å sample points spread evenly inside every cell (``p`` = order's tetrahedral number)."""
    bary = _lattice(order)  # (p, 4)
    return np.einsum("pk,tkj->tpj", bary, mesh.vertices_a[mesh.cells])  # (t, p, 3)


def _xyz_to_zyx_index(xyz_a: np.ndarray, box: int, apix: float) -> np.ndarray:
    return (xyz_a / apix + box // 2)[..., ::-1]  # (..., 3) fractional (z, y, x) voxel index


def _check_label_volume(vol, mesh: Mesh, name: str) -> np.ndarray:
    v = np.asarray(vol)
    if v.shape != (mesh.box,) * 3:
        raise ValueError(f"{name} must be ({mesh.box}, {mesh.box}, {mesh.box}) like the mesh's box, got {v.shape}")
    return v


def cell_density_weights(mesh: Mesh, density: np.ndarray, min_weight: float = RIGIDITY_FLOOR, order: int = 4) -> np.ndarray:
    """Per-cell rigidity weights from the canonical density.

    Each cell's mean density is estimated from trilinear samples on an interior lattice
    of ``order``'s tetrahedral number of points; the densest cell gets 1, and the weights
    are floored at ``min_weight`` (ours: ``config.RIGIDITY_FLOOR``; cryoSPARC: 0.5; 0 gives the paper's "empty cells
    weigh zero").

    Args:
        mesh: the mesh (its ``box``/``apix`` place the density).
        density: ``(box, box, box)`` canonical map.
    Returns:
        ``(t,)`` float32 in ``[min_weight, 1]``.
    """
    vol = _check_label_volume(density, mesh, "density").astype(np.float64)
    if not 0.0 <= min_weight <= 1.0:
        raise ValueError(f"min_weight must lie in [0, 1], got {min_weight}")
    pts = cell_sample_points(mesh, order)  # (t, p, 3)
    idx = _xyz_to_zyx_index(pts.reshape(-1, 3), mesh.box, mesh.apix).T  # (3, t*p)
    samples = ndimage.map_coordinates(vol, idx, order=1, mode="constant", cval=0.0)
    mean = samples.reshape(pts.shape[:2]).mean(1)  # (t,)
    top = mean.max()
    w = np.clip(mean, 0.0, None) / top if top > 0 else np.zeros_like(mean)
    return np.maximum(w, min_weight).astype(np.float32)


def cell_volume_factors(vertices_a, cells, reference_volume_a3: float = RIGIDITY_REFERENCE_VOLUME_A3) -> np.ndarray:
    """``(t,)`` float32 ``V_j / V_ref``: each cell's volume over the reference cell's (the ``volume``
    scale of the rigidity prior, module notes), for ``vertices_a (v, 3)`` Å and ``cells (t, 4)``."""
    if not reference_volume_a3 > 0:
        raise ValueError(f"reference_volume_a3 must be positive, got {reference_volume_a3}")
    volumes = np.abs(cell_signed_volumes(np.asarray(vertices_a, np.float64), np.asarray(cells, np.int64)))
    return (volumes / reference_volume_a3).astype(np.float32)


def _in_labels(labels: np.ndarray, label_ids) -> np.ndarray:
    return labels > 0 if label_ids is None else np.isin(labels, np.asarray(label_ids))


def raise_rigid_cells(
    mesh: Mesh,
    weights: np.ndarray,
    labels: np.ndarray,
    factor: float = 10.0,
    value: float | None = None,
    label_ids=None,
    order: int = 4,
) -> np.ndarray:
    """Raise the weights of cells the user marked rigid in a painted label volume.

    A cell is marked when most of its interior sample points (nearest voxel) carry a
    selected label. Its weight is multiplied by ``factor``, or, when ``value`` is given,
    raised to at least ``value``.

    Args:
        weights: ``(t,)`` weights (e.g. from :func:`cell_density_weights`).
        labels: ``(box, box, box)`` int label volume (0 = unmarked).
        label_ids: labels that mean "rigid" (``None``: every label > 0).
    Returns:
        ``(t,)`` float32 new weights.
    """
    lab = _in_labels(_check_label_volume(labels, mesh, "labels"), label_ids)
    w = np.asarray(weights, dtype=np.float32).copy()
    if w.shape != (mesh.n_cells,):
        raise ValueError(f"weights must be ({mesh.n_cells},), got {w.shape}")
    pts = cell_sample_points(mesh, order)  # (t, p, 3)
    idx = np.rint(_xyz_to_zyx_index(pts, mesh.box, mesh.apix)).astype(np.int64)  # (t, p, 3)
    ok = ((idx >= 0) & (idx < mesh.box)).all(-1)
    idx = np.clip(idx, 0, mesh.box - 1)
    hit = lab[idx[..., 0], idx[..., 1], idx[..., 2]] & ok  # (t, p)
    marked = hit.mean(1) > 0.5
    if value is not None:
        w[marked] = np.maximum(w[marked], value)
    else:
        w[marked] = w[marked] * factor
    return w


def motion_mask_from_labels(mesh: Mesh, labels: np.ndarray, label_ids=None) -> np.ndarray:
    """Per-vertex motion mask ``(v,)`` float32: 0 at vertices whose nearest voxel carries a
    selected label (motion forbidden there, e.g. a micelle), 1 elsewhere (outside the box too).

    Args:
        labels: ``(box, box, box)`` int label volume the user painted.
        label_ids: labels that mean "no motion" (``None``: every label > 0).
    """
    lab = _in_labels(_check_label_volume(labels, mesh, "labels"), label_ids)
    idx = np.rint(_xyz_to_zyx_index(mesh.vertices_a, mesh.box, mesh.apix)).astype(np.int64)  # (v, 3)
    ok = ((idx >= 0) & (idx < mesh.box)).all(-1)
    idx = np.clip(idx, 0, mesh.box - 1)
    fixed = lab[idx[:, 0], idx[:, 1], idx[:, 2]] & ok
    return np.where(fixed, 0.0, 1.0).astype(np.float32)
