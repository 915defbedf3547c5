"""The 3DFlex forward model: ``I_i = C_i P(phi_i) D(f_theta(z_i), V)`` (paper §2, docs/model.md).

A room of ``model``; it may import ``config``, ``mesh``, ``ops`` and the rest of ``model``.

:class:`FlexModel` composes the canonical map ``V`` (:class:`~.canonical.CanonicalMap`:
values at the voxels of a solvent mask), the flow generator ``f_theta``
(:class:`~.flow.FlowGenerator`: latent -> vertex displacements), and the mesh (rest
vertices, cells, each mask voxel's cell vertices and barycentric weights, rigidity
weights). Convection and projection are one splat (``ops.splat.convect_project``); the
CTF multiplies the projection's ``rfft2``. ``z=None`` everywhere means the rigid model
(zero flow), which the rigid baseline and the reconstruction use.

How to train (for ``training/``)
--------------------------------
Parameters::

    model = FlexModel.from_map(consensus, apix, mesh, mask, latent_dim=2, lowpass_a=12.0)
    flow_params = list(model.flow.parameters())     # theta: the MLP (vertex_mask is a buffer)
    canonical_params = [model.canonical.values]     # V: (n_vox,) values at the mask voxels

Per minibatch (training box ``box``, particles Fourier-cropped to it)::

    batch = batch_from_particles(ps, idx, box=model.box, device=dev)
    # noise spectra: one per optics group, estimated once (streams a few thousand particles):
    #   spectra = particle_noise_spectra(ps, box=model.box, mask_radius_px=...)  # (groups, n_shells)
    noise = spectra[batch["optics_group"]]                       # (b, n_shells)
    model.max_freq_px = current_band_limit                     # frequency marching: V band limit
    pred = model.project(z, batch["rotations"], batch["shifts_a"], ctf=batch["ctf"])  # (b, N, N)
    e_data = data_loss(pred, batch["images"], noise, max_freq_px=current_band_limit, scale="fit")
    e_rigid = model.rigidity(z)                                  # (b,)
    loss = total_loss(e_data, e_rigid, lambda_rigid)             # mean over the batch

Latent inference (auto-decoder): make ``z`` a leaf with ``requires_grad_(True)`` and give
only ``[z]`` to its optimiser (the model's parameters then get gradients too, so zero
them, or wrap the model in ``requires_grad_(False)`` for the inner loop); minimise
``e_data + 0.5 * |z|^2`` (unit Gaussian prior) for a few steps, or do coordinate descent
over a grid when ``K`` is small. For the model update use ``z + 0.15 * randn`` (noise
injection, cryoSPARC's default std). ``model.canonical_values()`` recomputes the band
limit (two 3D FFTs) on every call; with ``V`` frozen, cache it if that matters.

Scale: projections are sums of voxel values along the view axis (as ``ops.project``), and
Fourier cropping preserves real-space grey levels, so model and image differ by a global
factor; ``scale="fit"`` in :func:`~.loss.data_loss` fits it per image (cheap and robust).

State: ``model.state_dict()`` holds only dense tensors (values, MLP weights, mesh and
barycentric buffers), so ``torch.save``/``torch.load(weights_only=True)`` and safetensors
work. ``max_freq_px`` and ``kernel`` are plain attributes: save them with the schedule.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import RIGIDITY_FLOOR
from ..mesh.rigidity import rest_edge_inverse, rigidity_energy
from .canonical import CanonicalMap
from .flow import FlowGenerator, fem_matrix, interpolate_vertex_flow, sparse_to_barycentric

__all__ = ["FlexModel", "batch_from_particles", "particle_noise_spectra", "barycentric_rows"]


class FlexModel(nn.Module):
    """Canonical map + flow generator + mesh: the 3DFlex generative model.

    Parameters
    ----------
    canonical
        :class:`CanonicalMap` (box ``N``, ``apix``, values at ``n_vox`` mask voxels).
    flow
        :class:`FlowGenerator` with ``n_vertices == v``.
    vertices_a, cells
        Rest mesh, ``(v, 3)`` xyz Å and ``(t, 4)`` vertex indices.
    bary_index, bary_weight
        ``(n_vox, 4)``: each mask voxel's cell vertices and barycentric weights (the rows
        of the FEM matrix ``B``; a voxel outside every cell has weight 0 and never moves).
    rigidity_weights
        ``(t,)`` per-cell weights ``w_j`` (default 1).
    kernel
        Splat kernel, ``"cubic"`` (default) or ``"linear"``.
    """

    def __init__(
        self,
        canonical: CanonicalMap,
        flow: FlowGenerator,
        vertices_a: torch.Tensor,
        cells: torch.Tensor,
        bary_index: torch.Tensor,
        bary_weight: torch.Tensor,
        rigidity_weights: torch.Tensor | None = None,
        kernel: str = "cubic",
    ):
        super().__init__()
        vertices_a = torch.as_tensor(vertices_a, dtype=torch.float32)
        cells = torch.as_tensor(np.asarray(cells) if not isinstance(cells, torch.Tensor) else cells).long()
        if vertices_a.ndim != 2 or vertices_a.shape[1] != 3:
            raise ValueError(f"vertices_a must be (v, 3), got {tuple(vertices_a.shape)}")
        if cells.ndim != 2 or cells.shape[1] != 4:
            raise ValueError(f"cells must be (t, 4), got {tuple(cells.shape)}")
        if flow.n_vertices != vertices_a.shape[0]:
            raise ValueError(f"flow has {flow.n_vertices} vertices, mesh has {vertices_a.shape[0]}")
        n_vox = canonical.n_voxels
        if tuple(bary_index.shape) != (n_vox, 4) or tuple(bary_weight.shape) != (n_vox, 4):
            raise ValueError(
                f"bary_index {tuple(bary_index.shape)} / bary_weight {tuple(bary_weight.shape)} must be ({n_vox}, 4)"
            )
        v = vertices_a.shape[0]
        if bary_index.numel() and (int(bary_index.min()) < 0 or int(bary_index.max()) >= v):
            raise ValueError(f"bary_index holds vertex indices outside [0, {v})")
        if cells.numel() and (int(cells.min()) < 0 or int(cells.max()) >= v):
            raise ValueError(f"cells hold vertex indices outside [0, {v})")
        if rigidity_weights is None:
            rigidity_weights = torch.ones(cells.shape[0])
        rigidity_weights = torch.as_tensor(rigidity_weights, dtype=torch.float32)
        if rigidity_weights.shape != (cells.shape[0],):
            raise ValueError(f"rigidity_weights must be ({cells.shape[0]},), got {tuple(rigidity_weights.shape)}")
        if kernel not in ("cubic", "linear"):
            raise ValueError(f"kernel must be 'cubic' or 'linear', got {kernel!r}")
        self.canonical = canonical
        self.flow = flow
        self.register_buffer("vertices_a", vertices_a.clone())
        self.register_buffer("cells", cells.clone())
        self.register_buffer("bary_index", torch.as_tensor(bary_index).long().clone())
        self.register_buffer("bary_weight", torch.as_tensor(bary_weight, dtype=torch.float32).clone())
        self.register_buffer("rigidity_weights", rigidity_weights.clone())
        self.register_buffer("rest_inv", rest_edge_inverse(vertices_a.double(), cells).float())  # (t, 3, 3) D^-1
        self.kernel = kernel
        self.deconvolve = False  # divide splats by the kernel's transfer function (ops.splat)
        self.max_freq_px: float | None = None  # frequency-marching band limit of V (Fourier px of this box)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_map(
        cls,
        consensus,
        apix: float,
        mesh,
        mask,
        latent_dim: int = 2,
        hidden: int = 64,
        layers: int = 6,
        lowpass_a: float | None = None,
        motion_mask=None,
        rigidity_weights=None,
        rigidity_floor: float = RIGIDITY_FLOOR,
        kernel: str = "cubic",
        init_std_a: float = 1e-4,
    ) -> "FlexModel":
        """Build a model from a consensus map ``(N, N, N)``, its ``apix``, a mesh and a solvent mask.

        ``mesh`` is a ``mesh.mesh.Mesh`` (or anything with ``vertices_a (v, 3)``, ``cells
        (t, 4)`` and optional ``rigidity_weights``/``motion_mask``) in the same Å frame.
        ``motion_mask (v,)`` and ``rigidity_weights (t,)`` override the mesh's; without
        either, rigidity weights come from the low-passed map (:func:`cell_density_weights`,
        floored at ``rigidity_floor``). The map and mask must be at the training box.
        """
        canonical = CanonicalMap.from_volume(consensus, mask, apix, lowpass_a=lowpass_a)
        vertices = torch.as_tensor(np.asarray(mesh.vertices_a), dtype=torch.float32)
        cells = torch.as_tensor(np.asarray(mesh.cells), dtype=torch.long)
        if motion_mask is None:
            motion_mask = getattr(mesh, "motion_mask", None)
        if rigidity_weights is None:
            rigidity_weights = getattr(mesh, "rigidity_weights", None)
        if rigidity_weights is None:
            from ..mesh.rigidity import cell_density_weights

            density = canonical.to_volume().detach().cpu().numpy()
            rigidity_weights = cell_density_weights(mesh, density, min_weight=rigidity_floor)
        flow = FlowGenerator(
            latent_dim,
            vertices.shape[0],
            hidden=hidden,
            layers=layers,
            vertex_mask=None if motion_mask is None else torch.as_tensor(np.asarray(motion_mask)),
            init_std_a=init_std_a,
        )
        bary_index, bary_weight = barycentric_rows(mesh, canonical.points_xyz_a)
        return cls(canonical, flow, vertices, cells, bary_index, bary_weight, rigidity_weights, kernel=kernel)

    # ------------------------------------------------------------------ properties
    @property
    def box(self) -> int:
        return self.canonical.box

    @property
    def apix(self) -> float:
        return self.canonical.apix

    @property
    def latent_dim(self) -> int:
        return self.flow.latent_dim

    @property
    def motion_mask(self) -> torch.Tensor:
        """``(v,)`` per-vertex motion mask (a buffer of the flow generator)."""
        return self.flow.vertex_mask

    # ------------------------------------------------------------------ the model
    def canonical_values(self) -> torch.Tensor:
        """``V`` at the mask voxels ``(n_vox,)``, band-limited to ``max_freq_px`` if set."""
        return self.canonical.band_limited(self.max_freq_px)

    def displacements(self, z: torch.Tensor) -> torch.Tensor:
        """Vertex displacements ``(b, v, 3)`` xyz Å (masked) for latents ``z (b, K)``."""
        return self.flow(z)

    def voxel_flow(self, z: torch.Tensor, displacements: torch.Tensor | None = None) -> torch.Tensor:
        """Flow ``u = B (m * d)`` at every mask voxel, ``(b, n_vox, 3)`` Å (``displacements``: ``d``
        at ``z`` if already made)."""
        d = self.displacements(z) if displacements is None else displacements
        fem, fem_t = self._fem(d.dtype)
        return interpolate_vertex_flow(d, self.bary_index, self.bary_weight, fem=fem, fem_t=fem_t)

    def _fem(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The sparse FEM matrix ``B`` and its transpose, made once (again when the barycentric buffers move
        or change)."""
        key = tuple((t.data_ptr(), t._version, t.device) for t in (self.bary_index, self.bary_weight)) + (dtype,)
        cached = self.__dict__.get("_fem_cache")
        if cached is None or cached[0] != key:
            fem = fem_matrix(self.bary_index, self.bary_weight, self.vertices_a.shape[0], dtype)
            cached = (key, (fem, fem.t()))
            self.__dict__["_fem_cache"] = cached
        return cached[1]

    def voxel_points(self, z: torch.Tensor | None, displacements: torch.Tensor | None = None) -> torch.Tensor:
        """Moved voxel centres ``y + u(y)``: ``(b, n_vox, 3)`` xyz Å (``z=None``: ``(1, n_vox, 3)`` rest)."""
        rest = self.canonical.points_xyz_a
        if z is None:
            return rest[None]
        return rest[None] + self.voxel_flow(z, displacements)

    def project(
        self,
        z: torch.Tensor | None,
        rotations: torch.Tensor,
        shifts_a: torch.Tensor | None = None,
        ctf: torch.Tensor | None = None,
        kernel: str | None = None,
        values: torch.Tensor | None = None,
        displacements: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model images ``(b, N, N)``: convect + project ``V`` (one splat), then the CTF.

        ``z (b, K)`` latents or ``None`` (rigid); ``rotations (b, 3, 3)`` RELION ``A``;
        ``shifts_a (b, 2)`` (RELION origin, Å; ``None`` = 0); ``ctf (b, N, N//2+1)`` rfft
        layout or ``None``; ``values (n_vox,)`` the map to project, if not
        :meth:`canonical_values` (computed once for many calls with the map frozen);
        ``displacements (b, v, 3)``: :meth:`displacements` at ``z``, if already made.
        """
        from ..ops.splat import convect_project

        values = self.canonical_values() if values is None else values
        rotations = torch.as_tensor(rotations).to(values)
        b = rotations.shape[0]
        if shifts_a is None:
            shifts_a = values.new_zeros(b, 2)
        shifts_a = torch.as_tensor(shifts_a).to(values)
        if z is not None and z.shape[0] != b:
            raise ValueError(f"z has {z.shape[0]} rows but there are {b} rotations")
        # (n_vox, 3) | (b, n_vox, 3)
        points = self.canonical.points_xyz_a if z is None else self.voxel_points(z, displacements)
        images = convect_project(
            values, points, rotations, shifts_a, self.box, self.apix, kernel=kernel or self.kernel,
            deconvolve=self.deconvolve,
        )  # (b, N, N)
        if ctf is not None:  # CTF in Fourier space: irfft2(CTF * rfft2(image))
            images = torch.fft.irfft2(torch.fft.rfft2(images) * self._checked_ctf(ctf, images), s=images.shape[-2:])
        return images

    forward = project

    def project_spectrum(
        self,
        z: torch.Tensor | None,
        rotations: torch.Tensor,
        shifts_a: torch.Tensor | None = None,
        ctf: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        displacements: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``rfft2(project(...), norm="ortho")`` ``(b, N, N//2+1)`` complex, the CTF applied there without
        the transform back (what the data loss needs: ``model.loss.spectral_data_loss``). The same
        inside ``|k| < N/2``; on the Nyquist row and column :meth:`project`'s round trip makes an
        astigmatic CTF's product Hermitian, this keeps it as it is (no loss band reaches past ``N/2``)."""
        images = self.project(z, rotations, shifts_a, values=values, displacements=displacements)
        spectrum = torch.fft.rfft2(images, norm="ortho")
        return spectrum if ctf is None else spectrum * self._checked_ctf(ctf, images)

    def _checked_ctf(self, ctf: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        if ctf.shape != (b, self.box, self.box // 2 + 1):
            raise ValueError(f"ctf must be ({b}, {self.box}, {self.box // 2 + 1}), got {tuple(ctf.shape)}")
        return ctf.to(images)

    def volume(self, z: torch.Tensor | None = None, kernel: str | None = None) -> torch.Tensor:
        """Convected map ``W`` ``(N, N, N)`` at one latent ``z (K,)`` or ``(1, K)`` (``None``: rigid)."""
        from ..ops.splat import convect_volume

        values = self.canonical_values()
        if z is None:
            points = self.canonical.points_xyz_a
        else:
            z = z.reshape(1, -1)
            points = self.voxel_points(z)[0]  # (n_vox, 3)
        return convect_volume(values, points, self.box, self.apix, kernel=kernel or self.kernel, deconvolve=self.deconvolve)

    def at_box(self, box: int) -> "FlexModel":
        """The same model seen at a smaller box ``n``: for cheaper latent inference.

        The view shares this model's flow generator (the same module: its updates show at
        once) and mesh; its canonical map sits at the ``n``-box voxels (voxel size
        ``apix * N / n``) that touch this model's mask, and holds no values of its own
        until :meth:`copy_canonical_from` puts the Fourier-cropped canonical map there.
        A projection costs about ``(n / N)^3`` of this model's: the splat visits every
        mask voxel once per image.
        """
        from ..mesh.mesh import Mesh
        from .canonical import mask_voxels

        box = int(box)
        if box == self.box:
            return self
        if not 8 <= box < self.box or box % 2:
            raise ValueError(f"a view's box must be even, >= 8 and below the model's {self.box}, got {box}")
        apix = self.apix * self.box / box
        fine = self.canonical.to_volume(torch.ones_like(self.canonical.values)).detach()  # (N, N, N) mask
        fine = torch.nn.functional.max_pool3d(fine[None, None], 3, stride=1, padding=1)[0, 0]  # one voxel wider
        # the nearest fine voxel to each coarse voxel centre (both grids centred at box // 2)
        near = torch.round(self.box // 2 + (torch.arange(box, device=fine.device) - box // 2) * (self.box / box))
        near = near.long().clamp(0, self.box - 1)
        coarse = fine[near][:, near][:, :, near] > 0.5  # (n, n, n)
        index, points = mask_voxels(coarse, apix)
        canonical = CanonicalMap(torch.zeros(len(index)), index, box, apix)  # view.to() below moves it
        mesh = Mesh(self.vertices_a.cpu().numpy(), self.cells.cpu().numpy(), box, apix)
        bary_index, bary_weight = barycentric_rows(mesh, canonical.points_xyz_a)
        view = FlexModel(
            canonical, self.flow, self.vertices_a, self.cells, bary_index, bary_weight, self.rigidity_weights,
            kernel=self.kernel,
        )
        view.deconvolve = self.deconvolve
        return view.to(self.vertices_a.device)

    @torch.no_grad()
    def copy_canonical_from(self, fine: "FlexModel") -> None:
        """Set this view's canonical values to ``fine``'s band-limited map, Fourier-cropped
        to this box, and stop band-limiting here (the copy already is). No host sync."""
        from ..ops.fourier import fourier_crop_3d

        full = fine.canonical.to_volume(fine.canonical_values())  # (N, N, N), band-limited
        self.canonical.values.copy_(self.canonical.from_full(fourier_crop_3d(full, self.box)))
        self.max_freq_px = None

    def rigidity(self, z: torch.Tensor, displacements: torch.Tensor | None = None) -> torch.Tensor:
        """Local non-rigidity ``E_rigid (b,)`` = ``sum_j w_j sum_l (s_l(F_j) - 1)^2`` (signed ``s``);
        ``displacements (b, v, 3)``: :meth:`displacements` at ``z``, if already made."""
        d = self.displacements(z) if displacements is None else displacements  # (b, v, 3)
        return rigidity_energy(self.vertices_a, d, self.cells, self.rigidity_weights, rest_inv=self.rest_inv.to(d))


def barycentric_rows(mesh, points_xyz_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weight)``, both ``(n, 4)``: the vertices of each point's cell and its
    barycentric weights (the rows of ``mesh.barycentric.barycentric_matrix``; points
    outside the mesh get their nearest cell's clamped weights, as there)."""
    from ..mesh.barycentric import barycentric_matrix

    pts = points_xyz_a.detach().cpu().numpy().astype(np.float64)
    b = barycentric_matrix(mesh, pts, layout=torch.sparse_coo)
    index, weight = sparse_to_barycentric(b)
    return index.to(points_xyz_a.device), weight.to(points_xyz_a.device, torch.float32)


def batch_from_particles(ps, idx, box: int | None = None, apix: float | None = None, device=None,
                         dtype=torch.float32) -> dict:
    """A training minibatch from a ``ParticleSet``.

    Parameters
    ----------
    ps
        ``io.particles.ParticleSet`` with poses.
    idx
        ``(b,)`` particle indices.
    box
        Training box ``N_L`` (images are Fourier-cropped to it); default the particles' box.
    apix
        Training pixel size; default ``ps.apix * ps.box / box`` (a different value raises).

    Returns
    -------
    dict with ``images (b, N, N)``, ``rotations (b, 3, 3)`` (A), ``shifts_a (b, 2)``,
    ``ctf (b, N, N//2+1)`` (at the training box), ``optics_group (b,)`` long,
    ``index (b,)`` long, and the floats ``apix``, ``box``.
    """
    from ..ops.ctf import particle_ctf
    from ..ops.fourier import fourier_crop_2d

    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    box_in = int(ps.box)
    box = box_in if box is None else int(box)
    apix_train = float(ps.apix) * box_in / box
    if apix is not None and abs(float(apix) - apix_train) > 1e-4 * apix_train:
        raise ValueError(
            f"apix={apix} does not match the particles' {ps.apix} Å at box {box_in} cropped to {box} ({apix_train} Å)"
        )
    images = torch.as_tensor(np.asarray(ps.images(idx), dtype=np.float32), device=device).to(dtype)
    if images.shape[-1] != box_in:
        raise ValueError(f"particle images are {tuple(images.shape[-2:])}, expected box {box_in}")
    if box != box_in:
        images = fourier_crop_2d(images, box)
    rotations = torch.as_tensor(np.asarray(ps.rotations)[idx], device=device).to(dtype)
    shifts_a = torch.as_tensor(np.asarray(ps.shifts_a)[idx], device=device).to(dtype)
    ctf = particle_ctf(ps, idx, box=box, apix=apix_train, device=device, dtype=dtype)
    return {
        "images": images,
        "rotations": rotations,
        "shifts_a": shifts_a,
        "ctf": ctf,
        "optics_group": torch.as_tensor(np.asarray(ps.optics_group)[idx], device=device).long(),
        "index": torch.as_tensor(idx, device=device),
        "apix": apix_train,
        "box": box,
    }


def particle_noise_spectra(
    ps,
    box: int | None = None,
    mask_radius_px: float | None = None,
    max_particles: int = 4000,
    chunk: int = 256,
    seed: int = 0,
    device=None,
) -> torch.Tensor:
    """Background noise spectrum of each optics group, ``(n_groups, n_shells)``, at the training box.

    Streams up to ``max_particles`` randomly chosen particles (per group) in chunks through
    :func:`batch_from_particles` (so images are Fourier-cropped exactly as in training) and
    :func:`~.loss.noise_power_sums`. ``mask_radius_px`` is in pixels of the training box
    (default ``0.4 * box``). A group without particles gets the pooled spectrum.
    """
    from .loss import _finish_spectrum, n_shells_2d, noise_power_sums

    box = int(ps.box) if box is None else int(box)
    groups = np.asarray(ps.optics_group)
    rng = np.random.default_rng(seed)
    n_groups = len(ps.optics)
    sums = torch.zeros(n_groups, n_shells_2d(box), dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for g in range(n_groups):
        members = np.flatnonzero(groups == g)
        if members.size > max_particles:
            members = np.sort(rng.choice(members, max_particles, replace=False))
        for start in range(0, members.size, chunk):
            batch = batch_from_particles(ps, members[start : start + chunk], box=box, device=device)
            p, c = noise_power_sums(batch["images"], mask_radius_px)
            sums[g] += p.double().cpu()
            counts[g] += c.double().cpu()
    pooled = (sums.sum(0), counts.sum(0))
    return torch.stack(
        [_finish_spectrum(sums[g], counts[g]) if counts[g].sum() > 0 else _finish_spectrum(*pooled)
         for g in range(n_groups)]
    ).float()
