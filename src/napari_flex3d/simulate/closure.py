"""Domain closure: rigid domains rotating about a hinge axis, on the built-in molecule or a user's model.

The motion has one coordinate ``c`` in ``[-1, 1]`` (-1 open, +1 closed, 0 the middle).
Every atom turns about one hinge axis (a point and a unit direction) by
``weight * c * closure_deg / 2``, so the moving domain (weight 1) swings through
``closure_deg`` between the two ends along arcs, and a second domain (weight
``second_domain_fraction``) moves part of the way in concert. Static atoms have weight 0.

Two molecules:

- built in (:func:`build_closure_molecule`): the simulator's body-linker-arm molecule
  (:mod:`.molecule`) with the hinge axis along y through the linker's middle (the arm swings
  out of the plane the ``hinge`` motion turns it in; its weight rises smoothly across the
  linker, so the linker bends) and a small lid on the body as the second domain;
- a user's PDB/mmCIF (:func:`closure_molecule_from_structure`): domains given as chain and
  residue ranges, the axis through the CA atoms of two hinge residues; everything else stays.

Occupancy (:func:`sample_closure_coords`): ``bimodal`` puts 45 % of the particles near each
end (a half-normal of sd 0.12 inside it) and 10 % uniformly between; ``uniform`` is flat.
Imports NumPy and the simulator's own modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .molecule import build_molecule
from .structure import read_structure, residue_centre, select

__all__ = [
    "OCCUPANCIES", "ClosureSpec", "ClosureMolecule", "build_closure_molecule", "closure_molecule_from_structure",
    "sample_closure_coords", "rotate_about_axis",
]

OCCUPANCIES = ("bimodal", "uniform")
_END_FRACTION = 0.45  # of the particles near each end (bimodal)
_END_SD = 0.12  # how far inside its end a particle of an end state sits (half-normal, coordinate units)
# The built-in lid (second domain), in fractions of the box length, on the body's +y side.
_LID_CENTRE = np.array([-0.13, 0.115, 0.0])
_LID_RADIUS = 0.045


@dataclass(frozen=True)
class ClosureSpec:
    """What ``flex3d simulate --motion closure`` was asked for (all optional).

    ``domain``, ``second_domain``: residue selections ``"A:1-120,B:5-40"``; ``hinge``: two
    residues ``"A:121,A:199"`` whose CA atoms the axis runs through (with ``pdb``).
    """

    closure_deg: float = 40.0
    second_domain_fraction: float = 0.3
    occupancy: str = "bimodal"
    pdb: str | None = None
    domain: str | None = None
    second_domain: str | None = None
    hinge: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option."""
        if not (0.0 < self.closure_deg <= 180.0):
            raise ValueError(f"--closure-deg must be in (0, 180], got {self.closure_deg}")
        if not (0.0 <= self.second_domain_fraction <= 1.0):
            raise ValueError(f"--second-domain-fraction must be in [0, 1], got {self.second_domain_fraction}")
        if self.occupancy not in OCCUPANCIES:
            raise ValueError(f"--occupancy must be one of {OCCUPANCIES}, got {self.occupancy!r}")
        if self.pdb is None and any(v is not None for v in (self.domain, self.second_domain, self.hinge)):
            raise ValueError("--domain, --second-domain and --hinge need --pdb (the built-in molecule has its own)")
        if self.pdb is not None and (self.domain is None or self.hinge is None):
            raise ValueError("--pdb needs --domain (e.g. A:1-120) and --hinge (two residues, e.g. A:121,A:199)")


@dataclass(frozen=True)
class ClosureMolecule:
    """Rest atoms and closure weights.

    Attributes
    ----------
    xyz_a : (n_atoms, 3) float64 rest coordinates, Å, xyz, origin at voxel box//2.
    domain : (n_atoms,) int8: 0 static, 1 linker (built in), 2 the moving domain, 3 the second domain.
    weight : (n_atoms,) float64, fraction of the closure angle each atom turns by.
    axis_point_a : (3,) a point on the hinge axis; axis_direction : (3,) its unit direction.
    closure_deg : the angle between the two ends (``c = -1`` and ``c = +1``).
    sigma_a : every atom's Gaussian width, Å.
    """

    xyz_a: np.ndarray
    domain: np.ndarray
    weight: np.ndarray
    axis_point_a: np.ndarray
    axis_direction: np.ndarray
    closure_deg: float
    sigma_a: float

    @property
    def n_atoms(self) -> int:
        return int(self.xyz_a.shape[0])

    @property
    def moving_atoms(self) -> np.ndarray:
        """``(n_atoms,)`` bool: atoms that move at all."""
        return self.weight > 0

    def deform(self, coords: np.ndarray) -> np.ndarray:
        """Moved atoms ``(b, n_atoms, 3)`` Å for closure coordinates ``coords (b, 1)`` in [-1, 1]."""
        coords = np.asarray(coords, np.float64)
        if coords.ndim != 2 or coords.shape[1] != 1:
            raise ValueError(f"coords must have shape (b, 1) for motion 'closure', got {coords.shape}")
        angle = np.deg2rad(0.5 * self.closure_deg) * coords * self.weight  # (b, n)
        return rotate_about_axis(self.xyz_a, angle, self.axis_point_a, self.axis_direction)


def rotate_about_axis(xyz: np.ndarray, angle_rad: np.ndarray, point: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Points ``(n, 3)`` turned by per-point angles ``(b, n)`` about the axis through ``point``
    along unit ``direction`` (Rodrigues, right-handed, active): ``(b, n, 3)``."""
    k = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    p = np.asarray(xyz, np.float64) - point  # (n, 3)
    c, s = np.cos(angle_rad)[..., None], np.sin(angle_rad)[..., None]  # (b, n, 1)
    return point + p * c + np.cross(k, p) * s + np.outer(p @ k, k) * (1.0 - c)


def build_closure_molecule(box: int, apix: float, spec: ClosureSpec, n_atoms: int = 3000, sigma_px: float = 1.5,
                           seed: int = 0) -> ClosureMolecule:
    """The built-in molecule (:func:`~.molecule.build_molecule`'s body, linker and arm) plus a lid
    of ``n_atoms // 12`` atoms, closing about the y axis through the linker's middle."""
    base = build_molecule(box, apix, n_atoms=n_atoms, sigma_px=sigma_px, seed=seed)
    length_a = box * apix
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))  # its own stream: the base is unchanged
    n_lid = max(1, n_atoms // 12)
    v = rng.standard_normal((n_lid, 3))
    v *= (rng.random(n_lid) ** (1.0 / 3.0) / np.linalg.norm(v, axis=1))[:, None]
    lid = (_LID_CENTRE + _LID_RADIUS * v) * length_a
    weight = np.concatenate([base.hinge_weight, np.full(n_lid, spec.second_domain_fraction)])
    return ClosureMolecule(
        xyz_a=np.concatenate([base.xyz_a, lid]),
        domain=np.concatenate([base.domain, np.full(n_lid, 3, np.int8)]),
        weight=weight,
        axis_point_a=base.hinge_pivot_a.copy(),
        axis_direction=np.array([0.0, 1.0, 0.0]),
        closure_deg=float(spec.closure_deg),
        sigma_a=base.sigma_a,
    )


def closure_molecule_from_structure(spec: ClosureSpec, box: int, apix: float, sigma_px: float = 1.5) -> ClosureMolecule:
    """A user's model as Gaussian atoms, centred (atoms' mean at voxel box//2), closing as ``spec`` says.

    Raises ``ValueError`` when the domains overlap, or when the molecule, with its moving
    domains at both ends, does not fit inside the box (naming the box it would need).
    """
    atoms = read_structure(spec.pdb)
    first = select(atoms, spec.domain, "--domain")
    second = select(atoms, spec.second_domain, "--second-domain") if spec.second_domain else np.zeros_like(first)
    if (first & second).any():
        raise ValueError(f"--domain and --second-domain share {int((first & second).sum())} atoms of {spec.pdb}")
    hinge = [h.strip() for h in str(spec.hinge).split(",")]
    if len(hinge) != 2:
        raise ValueError(f"--hinge must name two residues CHAIN:RES,CHAIN:RES (the axis runs through their CA), got {spec.hinge!r}")
    a, b = (residue_centre(atoms, h) for h in hinge)
    if np.linalg.norm(b - a) < 1.0:
        raise ValueError(f"--hinge residues {spec.hinge} are less than 1 Å apart: they do not define an axis")
    centre = atoms.xyz_a.mean(0)
    weight = np.where(first, 1.0, np.where(second, spec.second_domain_fraction, 0.0))
    domain = np.where(first, 2, np.where(second, 3, 0)).astype(np.int8)
    mol = ClosureMolecule(atoms.xyz_a - centre, domain, weight, a - centre, (b - a) / np.linalg.norm(b - a),
                          float(spec.closure_deg), float(sigma_px * apix))
    ends = mol.deform(np.array([[-1.0], [1.0]]))
    reach_a = float(np.abs(ends).max()) + 3.0 * mol.sigma_a
    if reach_a > 0.5 * box * apix:
        need = 2 * int(np.ceil(reach_a / apix))
        raise ValueError(f"{spec.pdb}: the molecule reaches {reach_a:.0f} Å from its centre at the closure's ends; "
                         f"box {box} at {apix:g} Å/px holds {0.5 * box * apix:.0f} Å (use --box {need + need % 2} "
                         f"or a larger --apix)")
    return mol


def sample_closure_coords(rng: np.random.Generator, n: int, occupancy: str) -> np.ndarray:
    """``(n, 1)`` closure coordinates in [-1, 1] (see the module docstring for the two occupancies)."""
    if occupancy == "uniform":
        return rng.uniform(-1.0, 1.0, (n, 1))
    if occupancy != "bimodal":
        raise ValueError(f"occupancy must be one of {OCCUPANCIES}, got {occupancy!r}")
    pick = rng.random(n)
    inside = np.minimum(np.abs(rng.normal(0.0, _END_SD, n)), 1.0)
    c = np.where(pick < _END_FRACTION, -1.0 + inside, np.where(pick < 2 * _END_FRACTION, 1.0 - inside,
                                                                  rng.uniform(-1.0, 1.0, n)))
    return c[:, None]
