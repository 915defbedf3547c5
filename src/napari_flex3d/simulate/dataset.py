"""Write a synthetic flexible cryo-EM dataset with ground truth.

Layout of ``out_dir``::

    particles.mrcs          (n, box, box) float32 noisy CTF-modulated projections
    particles.star          RELION 3.1 (optics + particles; poses, shifts, CTF, rlnRandomSubset 1/2)
    consensus.mrc           rigid reconstruction of all particles at their true poses and CTF
    consensus_half1.mrc     ... of half set 1 (rlnRandomSubset 1)
    consensus_half2.mrc     ... of half set 2
    truth/
        truth.json          motion type, amplitudes, seed, SNR, atom count, states, FSC figures
        coords.npy          (n, k) float32 true motion coordinates, STAR row order
        atoms.npy           (n_atoms, 3) float32 rest coordinates (xyz Å, origin at voxel box//2)
        atom_domains.npy    (n_atoms,) int8: 0 body, 1 linker, 2 arm (closure: 0 static, 1 linker,
                            2 the moving domain, 3 the second domain)
        atom_motion_weight.npy  (closure only) (n_atoms,) fraction of the closure angle each atom turns by
        state_000.mrc ...   true density at the states listed in truth.json
        states_displacement_a.npy  (n_states, n_atoms, 3) float32 each atom's displacement (Å) at those states
        average.mrc         true density averaged over the particles' state distribution

Nothing in ``particles.star`` tells the truth: the ground truth lives only in ``truth/``.

Part of ``simulate`` (a feature room): imports ``conventions``, the core rooms ``io`` and
``ops``, the simulator's own modules and ``reconstruct.rigid`` (for the consensus).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import torch

from ..conventions import euler_to_matrix, matrix_to_euler
from ..io.atomic import atomic_path, save_npy, write_json
from ..io.mrc import write_map
from ..io.optics import OpticsGroup
from ..io.particle_set import ParticleSet
from ..io.star_particles import write_star
from ..ops.ctf import ctf_2d
from ..ops.fsc import fsc, fsc_resolution
from .closure import ClosureSpec, build_closure_molecule, closure_molecule_from_structure, sample_closure_coords
from .molecule import Molecule, build_molecule, deform, motion_dim, sample_motion_coords
from .render import project_atoms, render_volume

__all__ = ["SimulationResult", "simulate_dataset", "simulate_particles", "make_sample", "validate_args"]

VOLTAGE_KV = 300.0
CS_MM = 2.7
AMPLITUDE_CONTRAST = 0.1
DEFOCUS_RANGE_A = (10000.0, 25000.0)
MAX_ASTIGMATISM_A = 500.0
SHIFT_SD_A = 3.0
STATES_PER_COORD = 5


@dataclass
class SimulationResult:
    """What :func:`simulate_dataset` wrote, and how long it took."""

    out_dir: Path
    particles_star: Path
    particles_mrcs: Path
    consensus: Path
    half_maps: tuple[Path, Path]
    truth_dir: Path
    n_particles: int
    box: int
    apix: float
    motion: str
    snr: float
    snr_achieved: float
    seed: int
    n_atoms: int
    consensus_fsc_resolution_a: float
    half_map_fsc_resolution_a: float
    timings_s: dict = field(default_factory=dict)
    molecule: str = "body, linker, arm"

    def summary(self) -> str:
        t = self.timings_s
        lines = [
            f"flex3d simulate: {self.n_particles} particles, box {self.box}, {self.apix:g} Å/px, "
            f"motion {self.motion}, SNR {self.snr:g} (achieved {self.snr_achieved:.3g}), seed {self.seed}",
            f"  molecule:   {self.n_atoms} Gaussian atoms ({self.molecule})",
            f"  particles:  {self.particles_mrcs}",
            f"  STAR:       {self.particles_star} (RELION 3.1, half sets in rlnRandomSubset)",
            f"  consensus:  {self.consensus} (+ {self.half_maps[0].name}, {self.half_maps[1].name})",
            f"  truth:      {self.truth_dir}/ (coords.npy, atoms.npy, truth.json, state_*.mrc, average.mrc)",
            f"  consensus vs truth/average.mrc: FSC 0.143 at {self.consensus_fsc_resolution_a:.2f} Å; "
            f"half maps: FSC 0.143 at {self.half_map_fsc_resolution_a:.2f} Å (Nyquist {2 * self.apix:.2f} Å)",
            "  timings:    " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()),
        ]
        return "\n".join(lines)


def validate_args(n_particles: int, box: int, apix: float, snr: float, motion: str) -> None:
    """Raise ``ValueError`` naming the bad argument."""
    if int(n_particles) != n_particles or n_particles < 2:
        raise ValueError(f"n_particles must be an integer >= 2 (two half sets), got {n_particles}")
    if int(box) != box or box < 16 or box % 2:
        raise ValueError(f"box must be an even integer >= 16, got {box}")
    if not (apix > 0 and math.isfinite(apix)):
        raise ValueError(f"apix must be a positive number of Å per pixel, got {apix}")
    if not (snr > 0 and math.isfinite(snr)):
        raise ValueError(f"snr must be > 0 (var(signal) / var(noise)), got {snr}")
    motion_dim(motion)  # raises for an unknown motion


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per purpose, so adding a draw somewhere changes nothing else."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


@dataclass
class _Particles:
    coords: np.ndarray  # (n, k)
    rotations: np.ndarray  # (n, 3, 3) RELION A
    euler_deg: np.ndarray  # (n, 3) rot, tilt, psi
    shifts_a: np.ndarray  # (n, 2)
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    half_set: np.ndarray  # (n,) int8 0 (A) / 1 (B), the in-memory code of io.half_sets


def _draw_particles(n: int, motion: str, seed: int, occupancy: str = "bimodal") -> _Particles:
    from scipy.spatial.transform import Rotation

    if motion == "closure":
        coords = sample_closure_coords(_rng(seed, 2), n, occupancy)
    else:
        coords = sample_motion_coords(_rng(seed, 2), n, motion)
    rng = _rng(seed, 3)
    a = Rotation.random(n, random_state=rng).as_matrix()  # uniform on SO(3)
    euler = matrix_to_euler(a)  # (n, 3)
    rotations = euler_to_matrix(euler[:, 0], euler[:, 1], euler[:, 2])  # exactly what the STAR says
    shifts = np.clip(rng.normal(0.0, SHIFT_SD_A, (n, 2)), -3 * SHIFT_SD_A, 3 * SHIFT_SD_A)
    du = rng.uniform(*DEFOCUS_RANGE_A, n)
    dv = du - rng.uniform(0.0, MAX_ASTIGMATISM_A, n)  # RELION: U >= V
    angle = rng.uniform(0.0, 180.0, n)
    half = (rng.permutation(n) % 2).astype(np.int8)  # balanced to one particle
    return _Particles(coords, rotations, euler, shifts, du, dv, angle, half)


def _chunk_size(n_atoms: int, box: int) -> int:
    """Particles per batch so each (b, a, box) profile tensor stays near 50 MB."""
    return max(1, int(1.25e7 // (n_atoms * (box + 32))))


def simulate_particles(
    mol: Molecule,
    parts: _Particles,
    motion: str,
    box: int,
    apix: float,
    start: int,
    stop: int,
    workspace: dict | None = None,
) -> np.ndarray:
    """Noise-free CTF-modulated images of particles ``start:stop`` -> ``(b, box, box)`` float32."""
    sl = slice(start, stop)
    xyz = torch.as_tensor(deform(mol, parts.coords[sl], motion), dtype=torch.float32)  # (b, a, 3)
    rot = torch.as_tensor(parts.rotations[sl], dtype=torch.float32)
    sh = torch.as_tensor(parts.shifts_a[sl], dtype=torch.float32)
    img = project_atoms(xyz, rot, sh, box, apix, mol.sigma_a, workspace=workspace)  # (b, h, w)
    ctf = ctf_2d(
        box, apix, parts.defocus_u_a[sl], parts.defocus_v_a[sl], parts.defocus_angle_deg[sl],
        VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST,
    )  # (b, h, w//2+1)
    img = torch.fft.irfft2(torch.fft.rfft2(img) * ctf, s=(box, box))
    return img.numpy().astype(np.float32)


def _particle_set(parts: _Particles, stack_name: str, box: int, apix: float):
    """The particles as an in-memory ``ParticleSet`` (poses, shifts, CTF, half sets)."""
    n = parts.coords.shape[0]
    optics = OpticsGroup(
        name="opticsGroup1", number=1, voltage_kv=VOLTAGE_KV, cs_mm=CS_MM,
        amplitude_contrast=AMPLITUDE_CONTRAST, apix=float(apix), box=int(box),
    )
    return ParticleSet.from_arrays(
        image_paths=stack_name, image_indices=np.arange(n), defocus_u_a=parts.defocus_u_a, optics=[optics],
        rotations=parts.rotations, shifts_a=parts.shifts_a, defocus_v_a=parts.defocus_v_a,
        defocus_angle_deg=parts.defocus_angle_deg, phase_shift_deg=np.zeros(n), half_set=parts.half_set,
        has_poses=True,
    )


def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="step")


def _reconstruct_half_maps(star_path: Path, progress: bool = False, device=None) -> tuple[np.ndarray, np.ndarray]:
    """The consensus refinement's maps: rigid reconstruction of each half set at the true
    poses and CTF, read back from the STAR as any user's data would be (on ``device``)."""
    from ..io.particles import read_particles
    from ..reconstruct.rigid import half_set_indices, reconstruct_rigid

    ps = read_particles(star_path)
    halves = half_set_indices(ps)
    maps = [reconstruct_rigid(ps, idx, device=device) for idx in _progress(halves, "half maps", progress)]
    return maps[0].cpu().numpy().astype(np.float32), maps[1].cpu().numpy().astype(np.float32)


def _states(motion: str) -> np.ndarray:
    """The chosen states: ``STATES_PER_COORD`` along each coordinate, the others at 0
    (for ``none`` only the rest state, ``(1, 1)`` zeros; for ``closure`` nine, every eighth
    of the way from one end to the other, so the ends, the middle and the quarters are maps)."""
    if motion == "none":
        return np.zeros((1, 1))
    if motion == "closure":
        return np.linspace(-1.0, 1.0, 9)[:, None]
    line = np.linspace(-1.0, 1.0, STATES_PER_COORD)
    k = motion_dim(motion)
    out = []
    for j in range(k):
        s = np.zeros((STATES_PER_COORD, k))
        s[:, j] = line
        out.append(s)
    return np.concatenate(out)  # (k * STATES_PER_COORD, k)


def _average_volume(mol: Molecule, coords: np.ndarray, motion: str, box: int, apix: float) -> torch.Tensor:
    """Density averaged over the particles' states.

    The static atoms (hinge and twist weight 0) are rendered once; the moving ones at the
    centre of every occupied bin of a histogram of the coordinates (25 bins in 1-D,
    11 x 11 in 2-D), weighted by its count.
    """
    k = coords.shape[1]
    bins = 25 if k == 1 else 11
    edges = np.linspace(-1.0, 1.0, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    hist, _ = np.histogramdd(coords, bins=[edges] * k)
    occupied = np.argwhere(hist > 0)  # (m, k) bin indices
    states = centres[occupied]  # (m, k)
    weights = hist[tuple(occupied.T)] / coords.shape[0]  # (m,)
    if motion == "none":
        return render_volume(torch.as_tensor(mol.xyz_a, dtype=torch.float32), box, apix, mol.sigma_a)
    if motion == "closure":
        moving = mol.moving_atoms
    elif motion == "hinge":
        moving = mol.hinge_weight > 0
    elif motion == "twist":
        moving = mol.twist_weight > 0
    else:
        moving = (mol.hinge_weight > 0) | (mol.twist_weight > 0)  # weights depend on x only
    static = torch.as_tensor(mol.xyz_a[~moving], dtype=torch.float32)
    vol = render_volume(static, box, apix, mol.sigma_a)
    moved = deform(mol, states, motion)[:, moving]  # (m, a_moving, 3)
    w = np.repeat(weights, moved.shape[1])
    vol += render_volume(
        torch.as_tensor(moved.reshape(-1, 3), dtype=torch.float32), box, apix, mol.sigma_a,
        weights=torch.as_tensor(w, dtype=torch.float32),
    )
    return vol


@dataclass(frozen=True)
class _Setup:
    """The arguments every step of :func:`simulate_dataset` shares."""

    n: int
    box: int
    apix: float
    snr: float
    motion: str
    seed: int
    progress: bool
    closure: ClosureSpec | None = None


@dataclass(frozen=True)
class _StackStats:
    """What the noisy stack measured: signal and noise variance over all pixels, noise sd."""

    var_signal: float
    var_noise: float
    sigma: float


def simulate_dataset(
    out_dir: Path,
    n_particles: int = 5000,
    box: int = 64,
    apix: float = 3.0,
    snr: float = 0.1,
    motion: str = "hinge",
    seed: int = 0,
    progress: bool = False,
    n_atoms: int = 3000,
    device=None,
    closure: ClosureSpec | None = None,
) -> SimulationResult:
    """Simulate a flexible molecule's particles and write them with a consensus map and truth.

    Parameters
    ----------
    out_dir : folder to write (created; files of the same names are overwritten).
    n_particles : number of particle images (>= 2).
    box : image size in pixels (even, >= 16).
    apix : pixel size in Å.
    snr : var(signal) / var(noise) over all images (signal = CTF-modulated projections).
    motion : "hinge" (1 coordinate), "twist" (1), "both" (2 independent coordinates), "none"
        (1 coordinate, always 0: every particle at the rest state; the control) or "closure"
        (1 coordinate: rigid domains turning about a hinge axis, :mod:`.closure`).
    seed : everything is a deterministic function of the arguments.
    progress : show tqdm bars.
    closure : with ``motion="closure"``: the angle, the second domain's fraction, the occupancy
        and optionally a user's PDB/mmCIF with its domains and hinge (default ``ClosureSpec()``:
        the built-in molecule, 40 deg, 0.3, bimodal). Ignored for the other motions.
    device : where the consensus half maps are reconstructed (default the CPU; a GPU is much
        faster at large boxes: 3.3 s on an H100 against 461 s on 2 CPU cores for 20,000
        particles at box 128).

    Returns
    -------
    :class:`SimulationResult` (paths, figures, ``summary()``).
    """
    validate_args(n_particles, box, apix, snr, motion)
    if motion == "closure":
        closure = closure or ClosureSpec()
        closure.validate()
    setup = _Setup(int(n_particles), int(box), apix, snr, motion, seed, progress, closure if motion == "closure" else None)
    out_dir = Path(out_dir)
    truth_dir = _prepare_out_dir(out_dir)
    timings: dict[str, float] = {}
    t0, cpu0 = time.perf_counter(), time.process_time()

    mol = _molecule(setup, n_atoms)
    parts = _draw_particles(setup.n, motion, seed, closure.occupancy if setup.closure else "bimodal")
    stack_path = out_dir / "particles.mrcs"
    stats = _write_stack(stack_path, mol, parts, setup, timings, t0)

    # the STAR file (no ground truth in it)
    star_path = out_dir / "particles.star"
    write_star(_particle_set(parts, str(stack_path.resolve()), setup.box, apix), star_path)

    t1 = time.perf_counter()
    half_a, half_b, half_paths = _write_consensus(star_path, out_dir, setup, device)
    timings["reconstruct"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    truth = _write_truth(truth_dir, mol, parts, setup, 0.5 * (half_a + half_b), half_a, half_b, stats)
    timings["truth"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    timings["total CPU"] = time.process_time() - cpu0  # all threads; compare with total on a shared machine

    return SimulationResult(
        out_dir=out_dir, particles_star=star_path, particles_mrcs=stack_path,
        consensus=out_dir / "consensus.mrc", half_maps=half_paths, truth_dir=truth_dir,
        n_particles=setup.n, box=setup.box, apix=float(apix), motion=motion, snr=float(snr),
        snr_achieved=truth["snr_achieved"], seed=int(seed), n_atoms=mol.n_atoms,
        consensus_fsc_resolution_a=truth["consensus_vs_average_resolution_a"],
        half_map_fsc_resolution_a=truth["half_map_resolution_a"], timings_s=timings,
        molecule=_describe(setup),
    )


def _molecule(setup: _Setup, n_atoms: int):
    """The built-in molecule, its closure variant, or the user's model (``closure.pdb``)."""
    spec = setup.closure
    if spec is None:
        return build_molecule(setup.box, setup.apix, n_atoms=n_atoms, seed=setup.seed)
    if spec.pdb is None:
        return build_closure_molecule(setup.box, setup.apix, spec, n_atoms=n_atoms, seed=setup.seed)
    return closure_molecule_from_structure(spec, setup.box, setup.apix)


def _describe(setup: _Setup) -> str:
    spec = setup.closure
    if spec is None:
        return "body, linker, arm"
    where = "body, linker, arm, lid" if spec.pdb is None else f"{spec.pdb}: domain {spec.domain}" + (
        f", second domain {spec.second_domain}" if spec.second_domain else "")
    return (f"{where}; closing {spec.closure_deg:g} deg, second domain x{spec.second_domain_fraction:g}, "
            f"{spec.occupancy} occupancy")


def _prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir/truth`` and clear state maps a previous run may have left (it may have had more)."""
    truth_dir = out_dir / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    for old in truth_dir.glob("state_*.mrc"):
        old.unlink()
    return truth_dir


def _write_stack(stack_path: Path, mol: Molecule, parts: _Particles, setup: _Setup, timings: dict, t0: float) -> _StackStats:
    """Noise-free images straight into the memory-mapped stack, then white Gaussian noise at
    the requested SNR (measured over all pixels); records the ``project`` and ``noise`` timings."""
    n, box = setup.n, setup.box
    with atomic_path(stack_path) as tmp, mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True) as m:
        m.voxel_size = setup.apix
        m.set_image_stack()
        var_signal = _project_into(m.data, mol, parts, setup)
        timings["project"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        sigma = math.sqrt(var_signal / setup.snr)
        var_noise = _add_noise(m.data, sigma, _chunk_size(mol.n_atoms, box), setup.seed)
        m.update_header_stats()
    timings["noise"] = time.perf_counter() - t1
    return _StackStats(var_signal, var_noise, sigma)


def _project_into(stack: np.ndarray, mol: Molecule, parts: _Particles, setup: _Setup) -> float:
    """Fill ``stack (n, box, box)`` with noise-free images, chunk by chunk; their variance over all pixels."""
    n, box = setup.n, setup.box
    chunk = _chunk_size(mol.n_atoms, box)
    total, total_sq = 0.0, 0.0
    workspace: dict = {}
    for s in _progress(range(0, n, chunk), "projecting", setup.progress):
        img = simulate_particles(mol, parts, setup.motion, box, setup.apix, s, min(s + chunk, n), workspace)
        stack[s : s + img.shape[0]] = img
        total += float(img.sum(dtype=np.float64))
        total_sq += float(np.square(img, dtype=np.float64).sum())
    count = n * box * box
    return total_sq / count - (total / count) ** 2


def _add_noise(stack: np.ndarray, sigma: float, chunk: int, seed: int) -> float:
    """Add white Gaussian noise of sd ``sigma`` to ``stack (n, h, w)`` in place; its variance over all pixels."""
    rng = _rng(seed, 4)
    n = stack.shape[0]
    noise_sum, noise_sq = 0.0, 0.0
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        noise = rng.standard_normal((e - s,) + stack.shape[1:], dtype=np.float32) * np.float32(sigma)
        noise_sum += float(noise.sum(dtype=np.float64))
        noise_sq += float(np.square(noise, dtype=np.float64).sum())
        stack[s:e] += noise
    count = stack.size
    return noise_sq / count - (noise_sum / count) ** 2


def _write_consensus(star_path: Path, out_dir: Path, setup: _Setup, device) -> tuple[np.ndarray, np.ndarray, tuple[Path, Path]]:
    """The consensus, as a refinement would give it: rigid reconstruction of each half set,
    written as ``consensus_half1/2.mrc`` and their mean ``consensus.mrc``."""
    half_a, half_b = _reconstruct_half_maps(star_path, setup.progress, device)
    half_paths = (out_dir / "consensus_half1.mrc", out_dir / "consensus_half2.mrc")
    write_map(half_paths[0], half_a, setup.apix)
    write_map(half_paths[1], half_b, setup.apix)
    write_map(out_dir / "consensus.mrc", 0.5 * (half_a + half_b), setup.apix)
    return half_a, half_b, half_paths


def _write_truth(
    truth_dir: Path, mol: Molecule, parts: _Particles, setup: _Setup,
    consensus: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, stats: _StackStats,
) -> dict:
    """The ground truth: coordinates, atoms, state and average maps, FSC figures and ``truth.json`` (returned)."""
    box, apix, motion = setup.box, setup.apix, setup.motion
    save_npy(truth_dir / "coords.npy", parts.coords.astype(np.float32))
    save_npy(truth_dir / "atoms.npy", mol.xyz_a.astype(np.float32))
    save_npy(truth_dir / "atom_domains.npy", mol.domain)
    states = _states(motion)
    state_files = []
    moved = deform(mol, states, motion)  # (s, a, 3)
    save_npy(truth_dir / "states_displacement_a.npy", (moved - mol.xyz_a).astype(np.float32))
    if setup.closure is not None:
        save_npy(truth_dir / "atom_motion_weight.npy", mol.weight)
    for i, xyz in enumerate(_progress(moved, "truth volumes", setup.progress)):
        vol = render_volume(torch.as_tensor(xyz, dtype=torch.float32), box, apix, mol.sigma_a)
        name = f"state_{i:03d}.mrc"
        write_map(truth_dir / name, vol.numpy(), apix)
        state_files.append(name)
    average = _average_volume(mol, parts.coords, motion, box, apix)
    write_map(truth_dir / "average.mrc", average.numpy(), apix)
    curve = fsc(torch.as_tensor(consensus), average)
    half_curve = fsc(torch.as_tensor(half_a), torch.as_tensor(half_b))
    truth = {
        "motion": motion,
        "coordinate_names": {
            "hinge": ["hinge"], "twist": ["twist"], "both": ["hinge", "twist"], "none": ["none"],
            "closure": ["closure"],
        }[motion],
        **_motion_truth(mol, setup),
        "seed": int(setup.seed),
        "n_particles": setup.n,
        "box": box,
        "apix": float(apix),
        "snr": float(setup.snr),
        "snr_achieved": stats.var_signal / stats.var_noise,
        "signal_variance": stats.var_signal,
        "noise_sigma": stats.sigma,
        "n_atoms": mol.n_atoms,
        "atom_sigma_a": mol.sigma_a,
        "states": [{"file": f, "coords": c.tolist()} for f, c in zip(state_files, states)],
        "states_displacement": "states_displacement_a.npy: (n_states, n_atoms, 3) Å, in the order of states",
        "average": "average.mrc",
        "average_method": "the rest state (motion none)" if motion == "none" else
                          "static atoms once + moving atoms at each occupied histogram bin of coords.npy "
                          "(25 bins in 1-D, 11 x 11 in 2-D) weighted by its count",
        "consensus_vs_average_fsc": np.asarray(curve).tolist(),
        "consensus_vs_average_resolution_a": fsc_resolution(curve, box, apix),
        "half_map_fsc": np.asarray(half_curve).tolist(),
        "half_map_resolution_a": fsc_resolution(half_curve, box, apix),
        "ctf": {"voltage_kv": VOLTAGE_KV, "cs_mm": CS_MM, "amplitude_contrast": AMPLITUDE_CONTRAST,
                "defocus_range_a": list(DEFOCUS_RANGE_A)},
    }
    write_json(truth_dir / "truth.json", truth)
    return truth


def _motion_truth(mol, setup: _Setup) -> dict:
    """The motion's parameters for ``truth.json``."""
    motion, spec = setup.motion, setup.closure
    if spec is not None:
        return {
            "closure": {
                "closure_deg": mol.closure_deg, "second_domain_fraction": spec.second_domain_fraction,
                "occupancy": spec.occupancy, "axis_point_a": mol.axis_point_a.tolist(),
                "axis_direction": mol.axis_direction.tolist(), "pdb": spec.pdb, "domain": spec.domain,
                "second_domain": spec.second_domain, "hinge": spec.hinge,
                "meaning": "every atom turns about the axis by atom_motion_weight * c * closure_deg / 2; "
                           "c = -1 open, +1 closed",
            },
        }
    return {
        "hinge_deg_at_plus_1": mol.hinge_deg if motion in ("hinge", "both") else 0.0,
        "twist_deg_at_plus_1": mol.twist_deg if motion in ("twist", "both") else 0.0,
        "hinge_axis": "z through hinge_pivot_a; the body (domain 0) stays put",
        "twist_axis": "x through twist_centre_a; the arm rolls rigidly, the linker twists",
        "hinge_pivot_a": mol.hinge_pivot_a.tolist(),
        "twist_centre_a": mol.twist_centre_a.tolist(),
    }


def make_sample(n_particles: int = 400, box: int = 48, seed: int = 0, out_dir=None, motion: str = "hinge",
                apix: float | None = None, snr: float = 0.1) -> SimulationResult:
    """A small dataset for napari's sample data (a few seconds).

    Written to ``out_dir`` or to a per-user cache folder keyed by the arguments (rewritten
    each call: it is deterministic and quick). ``apix`` defaults to ``192 / box`` Å so the molecule has
    the same size in Å at any box. Returns the :class:`SimulationResult`; open
    ``result.consensus`` with scale ``result.apix``.
    """
    if apix is None:
        apix = 192.0 / box
    if out_dir is None:
        import os

        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        out_dir = cache / "napari-flex3d" / f"sample_{motion}_n{n_particles}_b{box}_a{apix:g}_snr{snr:g}_s{seed}"
    return simulate_dataset(Path(out_dir), n_particles=n_particles, box=box, apix=apix, snr=snr, motion=motion,
                            seed=seed)
