"""A pseudo-atomic two-domain molecule that bends and twists continuously.

The molecule is a cloud of Gaussian "atoms" in three parts, laid out along x:

- ``body`` (domain 0): a large tri-axial ellipsoid on the -x side, never moves;
- ``linker`` (domain 1): a short thin cylinder joining the two lobes;
- ``arm`` (domain 2): an elongated, flattened ellipsoid on the +x side with a knob on +y,
  so that a twist about its long axis is visible in projection.

Two motions, each driven by one coordinate ``c`` in ``[-1, 1]``:

- ``hinge``: every atom turns about the z axis through the linker's middle by
  ``w(x) * c * hinge_deg``, where ``w`` rises smoothly (a smoothstep) from 0 at the body
  end of the linker to 1 at the arm end: the body stays put, the arm turns rigidly and
  the linker bends in between, so the deformation is continuous.
- ``twist``: every atom turns about an axis parallel to x (the arm's long axis) that runs
  along the linker's -y edge (``_TWIST_AXIS_OFFSET``, 0.035 box lengths off the arm's centre
  line) by ``t(x) * c * twist_deg``, with ``t`` rising smoothly across the linker like the
  hinge's ``w``: the arm rolls rigidly about that axis (its flat faces and its knob on +y
  swing round, and it rocks out of the hinge's plane) and the linker twists in between.

Why the twist is what it is (measured with the oracle of :mod:`.oracle`: the true flow and
map, the repo's latent inference, 2,000 particles at SNR 0.05): the first version twisted
the arm non-rigidly about its own centre line (``t`` rising from the linker to the far tip)
by 35 deg, its coordinate drawn from Beta(2, 4) (sd 0.36). One standard deviation of it
moved the atoms by 0.60 Å RMS (hinge: 3.47 Å) and changed the density (at box 32) by 5.6 %
of its norm (hinge: 20 %), and even the oracle placed particles along it with correlation
only 0.45-0.48 at training box 32, 48 or 64 (hinge 0.95): the benchmark asked for a motion
below the data's information limit. A rigid roll of the arm about its own centre line
does not help much (the arm is nearly round about it: 12 % density change per sd at
90 deg, oracle 0.67). Rolling about an axis along the linker's edge, 60 deg at ``c = +-1``
with ``c`` uniform on [-1, 1] (sd 0.58), changes the density by 24 % per sd, the hinge's
size. The hinge is unchanged.

``both`` applies the twist (coordinate 1) and then the hinge (coordinate 0).
``closure`` (:mod:`.closure`) turns rigid domains about a hinge axis; its molecule is a
:class:`~.closure.ClosureMolecule`, which moves itself (``deform`` hands it ``coords``).
``none`` is the control: one coordinate that is always 0, every particle at the rest state
(flex and rigid reconstructions must then agree).

All geometry is given as fractions of the box length ``box * apix`` so the molecule
fills the same part of any box.
Imports NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MOTIONS", "Molecule", "build_molecule", "deform", "sample_motion_coords", "motion_dim"]

MOTIONS = ("hinge", "twist", "both", "none", "closure")  # closure: see :mod:`.closure`

# Geometry in fractions of the box length L = box * apix (x is the long axis).
_BODY_CENTRE = np.array([-0.11, 0.0, 0.0])
_BODY_RADII = np.array([0.105, 0.09, 0.08])
_LINKER_X = (-0.01, 0.06)  # body end, arm end
_LINKER_RADIUS = 0.03
_ARM_CENTRE = np.array([0.165, 0.0, 0.0])
_ARM_RADII = np.array([0.115, 0.07, 0.04])
_KNOB_CENTRE = np.array([0.22, 0.07, 0.0])
_KNOB_RADIUS = 0.035
_TWIST_AXIS_OFFSET = np.array([0.0, -0.035, 0.0])  # the twist axis: through the pivot plus this, along x


@dataclass(frozen=True)
class Molecule:
    """Rest coordinates and motion weights of the pseudo-atomic model.

    Attributes
    ----------
    xyz_a : (n_atoms, 3) float64, rest coordinates in Å (xyz, centred on voxel N//2).
    domain : (n_atoms,) int8, 0 = body, 1 = linker, 2 = arm.
    hinge_weight : (n_atoms,) float64 in [0, 1], fraction of the hinge angle each atom takes.
    twist_weight : (n_atoms,) float64 in [0, 1], fraction of the twist angle each atom takes.
    hinge_pivot_a : (3,) float64, a point on the hinge axis (the axis is z).
    twist_centre_a : (3,) float64, a point on the twist axis (the axis is x).
    hinge_deg, twist_deg : amplitude at coordinate +1 in degrees.
    sigma_a : Gaussian width of every atom in Å.
    """

    xyz_a: np.ndarray
    domain: np.ndarray
    hinge_weight: np.ndarray
    twist_weight: np.ndarray
    hinge_pivot_a: np.ndarray
    twist_centre_a: np.ndarray
    hinge_deg: float
    twist_deg: float
    sigma_a: float

    @property
    def n_atoms(self) -> int:
        return int(self.xyz_a.shape[0])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _points_in_ellipsoid(rng: np.random.Generator, n: int, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``n`` points uniform in an axis-aligned ellipsoid, ``(n, 3)``."""
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = rng.random(n) ** (1.0 / 3.0)
    return centre + v * r[:, None] * radii


def _points_in_cylinder_x(rng: np.random.Generator, n: int, x0: float, x1: float, radius: float) -> np.ndarray:
    """``n`` points uniform in a cylinder along x from ``x0`` to ``x1``, ``(n, 3)``."""
    x = rng.uniform(x0, x1, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    r = radius * np.sqrt(rng.random(n))
    return np.stack([x, r * np.cos(phi), r * np.sin(phi)], axis=1)


def build_molecule(
    box: int,
    apix: float,
    n_atoms: int = 3000,
    sigma_px: float = 1.5,
    hinge_deg: float = 25.0,
    twist_deg: float = 60.0,
    seed: int = 0,
) -> Molecule:
    """Build the molecule for a ``box``-voxel box of ``apix`` Å/voxel.

    Atoms are spread with uniform density over the three parts (each part gets atoms in
    proportion to its volume). ``sigma_px`` is each atom's Gaussian width in voxels.
    """
    if n_atoms < 100:
        raise ValueError(f"n_atoms must be >= 100, got {n_atoms}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    length_a = box * apix
    vols = np.array(
        [
            np.prod(_BODY_RADII),
            np.pi * 0.75 * _LINKER_RADIUS**2 * (_LINKER_X[1] - _LINKER_X[0]),
            np.prod(_ARM_RADII),
            _KNOB_RADIUS**3,
        ]
    )
    counts = np.floor(n_atoms * vols / vols.sum()).astype(int)
    counts[0] += n_atoms - counts.sum()
    parts = [
        _points_in_ellipsoid(rng, counts[0], _BODY_CENTRE, _BODY_RADII),
        _points_in_cylinder_x(rng, counts[1], *_LINKER_X, _LINKER_RADIUS),
        _points_in_ellipsoid(rng, counts[2], _ARM_CENTRE, _ARM_RADII),
        _points_in_ellipsoid(rng, counts[3], _KNOB_CENTRE, np.full(3, _KNOB_RADIUS)),
    ]
    xyz = np.concatenate(parts) * length_a  # (n_atoms, 3) Å
    domain = np.concatenate([np.full(c, d, np.int8) for c, d in zip(counts, (0, 1, 2, 2))])
    # Overlaps: atoms of the body/arm ellipsoids that fall inside the linker's x range
    # move with it, so the weights below depend on x only and the motion stays continuous.
    x_frac = xyz[:, 0] / length_a
    lo, hi = _LINKER_X
    hinge_weight = _smoothstep((x_frac - lo) / (hi - lo))
    twist_weight = hinge_weight.copy()  # the arm rolls as a whole, the linker twists
    pivot = np.array([0.5 * (lo + hi), 0.0, 0.0]) * length_a
    return Molecule(
        xyz_a=xyz,
        domain=domain,
        hinge_weight=hinge_weight,
        twist_weight=twist_weight,
        hinge_pivot_a=pivot,
        twist_centre_a=pivot + _TWIST_AXIS_OFFSET * length_a,
        hinge_deg=float(hinge_deg),
        twist_deg=float(twist_deg),
        sigma_a=float(sigma_px * apix),
    )


def motion_dim(motion: str) -> int:
    """Number of motion coordinates of a motion type (1 for hinge/twist/none/closure, 2 for both)."""
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    return 2 if motion == "both" else 1


def _rotate(xyz: np.ndarray, angle_rad: np.ndarray, axis: int, centre: np.ndarray) -> np.ndarray:
    """Rotate points ``(..., n, 3)`` about the coordinate ``axis`` through ``centre`` by
    per-point angles ``(..., n)`` (right-handed, active)."""
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    p = xyz - centre
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    out = p.copy()
    out[..., i] = c * p[..., i] - s * p[..., j]
    out[..., j] = s * p[..., i] + c * p[..., j]
    return out + centre


def deform(mol: Molecule, coords: np.ndarray, motion: str) -> np.ndarray:
    """Moved atom coordinates for motion coordinates ``coords``.

    Parameters
    ----------
    coords : (b, k) motion coordinates in [-1, 1], ``k = motion_dim(motion)``.

    Returns
    -------
    (b, n_atoms, 3) float64 xyz Å.
    """
    if motion == "closure":
        return mol.deform(coords)  # a ClosureMolecule
    coords = np.asarray(coords, dtype=np.float64)
    k = motion_dim(motion)
    if coords.ndim != 2 or coords.shape[1] != k:
        raise ValueError(f"coords must have shape (b, {k}) for motion {motion!r}, got {coords.shape}")
    xyz = np.broadcast_to(mol.xyz_a, (coords.shape[0],) + mol.xyz_a.shape).copy()  # (b, n, 3)
    if motion in ("twist", "both"):
        c = coords[:, -1:]  # (b, 1)
        angle = np.deg2rad(mol.twist_deg) * c * mol.twist_weight  # (b, n)
        xyz = _rotate(xyz, angle, axis=0, centre=mol.twist_centre_a)
    if motion in ("hinge", "both"):
        c = coords[:, :1]
        angle = np.deg2rad(mol.hinge_deg) * c * mol.hinge_weight  # (b, n)
        xyz = _rotate(xyz, angle, axis=2, centre=mol.hinge_pivot_a)
    return xyz


def sample_motion_coords(rng: np.random.Generator, n: int, motion: str) -> np.ndarray:
    """Draw ``(n, k)`` motion coordinates with non-uniform occupancy, clipped to [-1, 1].

    Hinge: a mixture of two Gaussians (65 % around -0.45, 35 % around +0.5), so the
    population has two preferred states and a sparse path between them. Twist: uniform on
    [-1, 1] (a flat valley; see the module docstring for why it is not narrower). ``both``
    draws the two independently, so the landscape is 2-D with two wells along the hinge.
    ``none``: all zeros (the rest state), no draw.
    """
    k = motion_dim(motion)
    if motion == "none":
        return np.zeros((n, k))
    if motion == "closure":
        raise ValueError("closure coordinates depend on the occupancy: use closure.sample_closure_coords")

    def hinge(m: int) -> np.ndarray:
        pick = rng.random(m) < 0.65
        x = np.where(pick, rng.normal(-0.45, 0.22, m), rng.normal(0.5, 0.18, m))
        return np.clip(x, -1.0, 1.0)

    def twist(m: int) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, m)

    if motion == "hinge":
        out = hinge(n)[:, None]
    elif motion == "twist":
        out = twist(n)[:, None]
    else:
        out = np.stack([hinge(n), twist(n)], axis=1)
    return out.reshape(n, k)
