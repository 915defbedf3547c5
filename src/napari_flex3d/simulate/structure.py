"""Atoms of a user's model (PDB or mmCIF) and the residue selections that name its domains.

``read_structure(path)`` returns every non-hydrogen, non-water atom of the first model
(first alternate location only) as :class:`Atoms`; ``select(atoms, "A:1-120,B:5-40")``
the rows of chain A residues 1-120 and chain B residues 5-40; ``residue_centre(atoms,
"A:121")`` the CA atom of that residue (the centre of its atoms if it has no CA).

A small reader of its own (the fixed columns of PDB ``ATOM``/``HETATM`` records and the
``_atom_site`` loop of mmCIF) because gemmi, the structure library the project would use,
is not installable everywhere the simulator runs; only coordinates, chain, residue
number, atom name and element are read. Chains and residue numbers are the author's
(``auth_asym_id``, ``auth_seq_id`` in mmCIF, as the PDB file and every viewer show them).
Imports NumPy only.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Atoms", "read_structure", "select", "residue_centre", "parse_selection"]

_WATER = {"HOH", "WAT", "DOD"}


@dataclass(frozen=True)
class Atoms:
    """``xyz_a (n, 3)`` float64 Å; ``chain (n,)`` str; ``residue (n,)`` int; ``name (n,)`` str (CA, N, ...)."""

    xyz_a: np.ndarray
    chain: np.ndarray
    residue: np.ndarray
    name: np.ndarray
    source: str


def _keep(element: str, name: str, resname: str, altloc: str) -> bool:
    element = (element or name.lstrip("0123456789")[:1]).upper()
    return element not in ("H", "D") and resname.upper() not in _WATER and altloc in ("", ".", "?", "A")


def _read_pdb(lines: list[str]) -> list[tuple]:
    rows = []
    for line in lines:
        if line.startswith("ENDMDL"):
            break  # the first model only
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        name, altloc, resname = line[12:16].strip(), line[16:17].strip(), line[17:20].strip()
        if _keep(line[76:78].strip() if len(line) >= 78 else "", name, resname, altloc):
            xyz = (float(line[30:38]), float(line[38:46]), float(line[46:54]))
            rows.append((xyz, line[21:22].strip(), int(line[22:26]), name))
    return rows


def _read_cif(lines: list[str], path: Path) -> list[tuple]:
    i = next((j for j, line in enumerate(lines) if line.strip().startswith("_atom_site.")), None)
    if i is None:
        raise ValueError(f"{path}: no _atom_site loop (not a coordinate mmCIF file?)")
    tags = []
    while i < len(lines) and lines[i].strip().startswith("_atom_site."):
        tags.append(lines[i].split()[0][len("_atom_site."):])
        i += 1
    col = {t: k for k, t in enumerate(tags)}
    need = ("Cartn_x", "Cartn_y", "Cartn_z")
    missing = [t for t in need if t not in col]
    if missing:
        raise ValueError(f"{path}: _atom_site lacks {', '.join('_atom_site.' + t for t in missing)}")

    def get(values, *names, default=""):
        return next((values[col[n]] for n in names if n in col), default)

    rows, first_model = [], None
    for line in lines[i:]:
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("loop_") or s.startswith("_"):
            break
        v = shlex.split(s)
        if len(v) != len(tags):
            raise ValueError(f"{path}: an _atom_site row has {len(v)} values for {len(tags)} columns: {s[:80]}")
        model = get(v, "pdbx_PDB_model_num", default="1")
        first_model = model if first_model is None else first_model
        if model != first_model:
            break
        name = get(v, "auth_atom_id", "label_atom_id").strip('"')
        if _keep(get(v, "type_symbol"), name, get(v, "auth_comp_id", "label_comp_id"), get(v, "label_alt_id")):
            xyz = tuple(float(v[col[t]]) for t in need)
            rows.append((xyz, get(v, "auth_asym_id", "label_asym_id"), int(get(v, "auth_seq_id", "label_seq_id")), name))
    return rows


def read_structure(path) -> Atoms:
    """The heavy atoms of the first model of a PDB (``.pdb``, ``.ent``) or mmCIF (``.cif``, ``.mmcif``) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no structure file {path}")
    lines = path.read_text(errors="replace").splitlines()
    is_cif = path.suffix.lower() in (".cif", ".mmcif") or any(line.startswith("_atom_site.") for line in lines[:2000])
    rows = _read_cif(lines, path) if is_cif else _read_pdb(lines)
    if not rows:
        raise ValueError(f"{path}: no atoms read (hydrogens and waters are skipped)")
    xyz, chain, residue, name = zip(*rows)
    return Atoms(np.array(xyz, np.float64), np.array(chain), np.array(residue, int), np.array(name), str(path))


_RANGE = re.compile(r"^\s*([A-Za-z0-9]+)\s*:\s*(-?\d+)\s*(?:-\s*(-?\d+))?\s*$")


def parse_selection(text: str, option: str = "--domain") -> list[tuple[str, int, int]]:
    """``"A:1-120,B:5"`` -> ``[("A", 1, 120), ("B", 5, 5)]``; a ``ValueError`` naming ``option`` otherwise."""
    out = []
    for part in str(text).split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"{option}: {part.strip()!r} is not CHAIN:FIRST-LAST or CHAIN:RESIDUE (e.g. A:1-120,B:5-40)")
        first = int(m.group(2))
        last = int(m.group(3)) if m.group(3) is not None else first
        if last < first:
            raise ValueError(f"{option}: {part.strip()!r} ends before it starts")
        out.append((m.group(1), first, last))
    return out


def select(atoms: Atoms, text: str, option: str = "--domain") -> np.ndarray:
    """Boolean ``(n,)``: the atoms inside the residue ranges of ``text`` (see :func:`parse_selection`)."""
    mask = np.zeros(len(atoms.xyz_a), bool)
    for chain, first, last in parse_selection(text, option):
        hit = (atoms.chain == chain) & (atoms.residue >= first) & (atoms.residue <= last)
        if not hit.any():
            raise ValueError(f"{option}: no atoms of chain {chain} residues {first}-{last} in {atoms.source}")
        mask |= hit
    return mask


def residue_centre(atoms: Atoms, text: str, option: str = "--hinge") -> np.ndarray:
    """``(3,)`` Å: the CA atom of one residue ``"A:121"``, or the centre of its atoms if it has no CA."""
    ranges = parse_selection(text, option)
    if len(ranges) != 1 or ranges[0][1] != ranges[0][2]:
        raise ValueError(f"{option}: {text!r} must name one residue, CHAIN:RESIDUE")
    hit = select(atoms, text, option)
    ca = hit & (atoms.name == "CA")
    return atoms.xyz_a[ca][0] if ca.any() else atoms.xyz_a[hit].mean(0)
