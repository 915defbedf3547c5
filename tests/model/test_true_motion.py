"""Acceptance: on simulator data, the model with the true deformation explains the
particles better than the rigid model (lower data loss at the true states).

The simulator writes particles of a hinged two-domain molecule, a consensus map and the
truth (rest atoms, each particle's hinge coordinate, the rest-state map). We

1. move the atoms with the simulator's own motion function (``simulate.molecule.deform``)
   over a grid of hinge coordinates, and solve for the vertex displacements whose linear
   FEM interpolation best matches the atoms' displacements (least squares, with a small
   edge-difference penalty for vertices far from atoms);
2. fit the flow generator with the latent fixed to the true coordinate to output them;
3. compare the whitened data loss of the particles at their true poses, CTFs and
   coordinates: flexible model vs the same canonical map with zero flow, and vs the
   consensus map (what a rigid refinement gives).
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from napari_flex3d.io.mrc import read_map
from napari_flex3d.io.particles import read_particles
from napari_flex3d.mesh import build_mesh, solvent_mask
from napari_flex3d.model.flex import FlexModel, batch_from_particles
from napari_flex3d.model.loss import data_loss, estimate_noise_spectrum, radial_frequency_2d, rfft_plane_weights
from napari_flex3d.simulate.dataset import simulate_dataset
from napari_flex3d.simulate.molecule import build_molecule
from napari_flex3d.simulate.oracle import true_vertex_displacements

BOX, APIX, N_PARTICLES = 32, 6.0, 240


@contextmanager
def _threads(n):
    """Small torch work runs fastest on one thread when the CPUs are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_hinge")
    return simulate_dataset(out, n_particles=N_PARTICLES, box=BOX, apix=APIX, snr=0.5, motion="hinge", seed=0)


def test_true_motion_beats_rigid(sim):
    truth = json.loads((sim.truth_dir / "truth.json").read_text())
    coords = np.load(sim.truth_dir / "coords.npy")  # (n, 1) true hinge coordinates, STAR order
    atoms = np.load(sim.truth_dir / "atoms.npy")
    mol = build_molecule(BOX, APIX, n_atoms=truth["n_atoms"], seed=truth["seed"])
    np.testing.assert_allclose(mol.xyz_a, atoms, atol=1e-3)  # the simulator's molecule, rebuilt

    rest_file = next(s["file"] for s in truth["states"] if np.allclose(s["coords"], 0.0))
    rest = read_map(sim.truth_dir / rest_file).data  # true map at hinge 0 = the canonical frame
    consensus = read_map(sim.consensus).data
    masks = solvent_mask(rest, APIX)
    mesh = build_mesh(masks.binary, APIX, cells_across=12)

    with _threads(1):
        torch.manual_seed(0)
        model = FlexModel.from_map(rest, APIX, mesh, masks.soft > 0, latent_dim=1)  # 6 x 64 MLP
        rigid_consensus = FlexModel.from_map(consensus, APIX, mesh, masks.soft > 0, latent_dim=1)

        # 1. vertex displacements from the atoms' true motion
        grid = np.linspace(-1.0, 1.0, 41)[:, None]
        d_true, ls_rms, motion_rms = true_vertex_displacements(mesh, mol, grid, truth["motion"])
        assert ls_rms < 0.1 * motion_rms, (ls_rms, motion_rms)

        # 2. the flow generator learns them with z fixed to the true coordinate
        z_grid = torch.as_tensor(grid, dtype=torch.float32)
        target = torch.as_tensor(d_true, dtype=torch.float32)
        opt = torch.optim.Adam(model.flow.parameters(), lr=2e-3)
        for _ in range(300):
            opt.zero_grad()
            fit = (model.flow(z_grid) - target).pow(2).mean()
            fit.backward()
            opt.step()
        fit_rms = float(fit.detach().sqrt())
        assert fit_rms < 0.05 * float(target.pow(2).mean().sqrt()), fit_rms

        # 3. data loss of every particle at its true pose, CTF and coordinate
        ps = read_particles(sim.particles_star)
        batch = batch_from_particles(ps, np.arange(len(ps)), box=BOX)
        spectrum = estimate_noise_spectrum(batch["images"], mask_radius_px=0.42 * BOX)
        white = spectrum[1 : BOX // 2 + 1] / truth["noise_sigma"] ** 2  # the simulator's noise is white
        assert (white - 1).abs().max() < 0.10, white

        max_freq = 0.8 * BOX / 2
        z = torch.as_tensor(coords, dtype=torch.float32)
        args = (batch["rotations"], batch["shifts_a"])
        with torch.no_grad():
            flex = data_loss(model.project(z, *args, ctf=batch["ctf"]), batch["images"], spectrum, max_freq)
            rigid = data_loss(model.project(None, *args, ctf=batch["ctf"]), batch["images"], spectrum, max_freq)
            cons = data_loss(rigid_consensus.project(None, *args, ctf=batch["ctf"]), batch["images"], spectrum,
                             max_freq)

    k = radial_frequency_2d(BOX)
    half_n_freq = 0.5 * float((rfft_plane_weights(BOX) * ((k > 0) & (k <= max_freq))).sum())
    gain, gain_cons = rigid - flex, cons - flex  # (n,) per particle
    print(
        f"\nwhitened data loss per particle (pure noise: {half_n_freq:.1f}): true motion {flex.mean():.2f}, "
        f"rigid same map {rigid.mean():.2f}, rigid consensus {cons.mean():.2f}; "
        f"vertex LS rms {ls_rms:.3f} A of {motion_rms:.2f} A, MLP fit rms {fit_rms:.3f} A"
    )
    # lower data loss with the true deformation, by many standard errors
    assert gain.mean() > 5 * gain.std() / len(gain) ** 0.5
    assert gain_cons.mean() > 5 * gain_cons.std() / len(gain_cons) ** 0.5
    # the flexible model explains the signal down to the noise floor (chi^2 / 2 = n_freq / 2)
    assert abs(float(flex.mean()) / half_n_freq - 1) < 0.025
    assert float(rigid.mean()) / half_n_freq - 1 > 0.02
    # particles far from the rest state gain most
    far = torch.as_tensor(np.abs(coords[:, 0]) > 0.3)
    assert (gain[far] > 0).float().mean() > 0.8
    assert gain[far].mean() > gain[~far].mean()


def test_batch_and_noise_spectra_from_particles(sim):
    """batch_from_particles crops images and builds CTFs at the training box; the streamed
    per-group spectrum equals the one-shot estimate."""
    from napari_flex3d.model.flex import particle_noise_spectra
    from napari_flex3d.ops.ctf import particle_ctf
    from napari_flex3d.ops.fourier import fourier_crop_2d

    ps = read_particles(sim.particles_star)
    idx = np.array([3, 0, 7])
    full = batch_from_particles(ps, idx)
    small = batch_from_particles(ps, idx, box=BOX // 2)
    assert small["images"].shape == (3, BOX // 2, BOX // 2) and small["apix"] == pytest.approx(2 * APIX)
    torch.testing.assert_close(small["images"], fourier_crop_2d(full["images"], BOX // 2))
    torch.testing.assert_close(small["ctf"], particle_ctf(ps, idx, box=BOX // 2, apix=2 * APIX))
    np.testing.assert_allclose(full["rotations"].numpy(), ps.rotations[idx], atol=1e-6)
    np.testing.assert_allclose(full["shifts_a"].numpy(), ps.shifts_a[idx], atol=1e-5)
    with pytest.raises(ValueError, match="apix"):
        batch_from_particles(ps, idx, box=BOX // 2, apix=APIX)
    streamed = particle_noise_spectra(ps, box=BOX, mask_radius_px=0.42 * BOX, chunk=50)
    once = estimate_noise_spectrum(batch_from_particles(ps, np.arange(len(ps)))["images"], 0.42 * BOX)
    assert streamed.shape == (len(ps.optics), once.shape[0])
    torch.testing.assert_close(streamed[0], once, rtol=2e-2, atol=0)
