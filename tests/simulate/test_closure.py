"""The closure motion: rigid domains on arcs about a hinge axis, on the built-in molecule and on a
user's PDB/mmCIF (written here, a few dozen atoms), its occupancy and its truth files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_flex3d.simulate.closure import (
    ClosureSpec,
    build_closure_molecule,
    closure_molecule_from_structure,
    sample_closure_coords,
)
from napari_flex3d.simulate.dataset import simulate_dataset
from napari_flex3d.simulate.oracle import simulated_molecule
from napari_flex3d.simulate.structure import read_structure, select


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _toy_atoms():
    """Chain A residues 1-12 along x (the static part and the hinge), chain B residues 1-8 off to +y
    (the moving domain), 4 atoms per residue (N, CA, C, O), plus a water and a hydrogen to skip."""
    rng = np.random.default_rng(5)
    rows = []
    for chain, n_res, origin in (("A", 12, np.array([-20.0, -6.0, 0.0])), ("B", 8, np.array([-8.0, 10.0, 2.0]))):
        for r in range(1, n_res + 1):
            for k, name in enumerate(("N", "CA", "C", "O")):
                xyz = origin + np.array([3.6 * r, 0.0, 0.0]) + rng.normal(0, 1.0, 3) + [0.0, 0.8 * k, 0.0]
                rows.append(("ATOM", name, "ALA", chain, r, xyz, name[0]))
    rows.append(("HETATM", "O", "HOH", "A", 100, np.array([0.0, 0.0, 0.0]), "O"))
    rows.append(("ATOM", "H", "ALA", "A", 1, np.array([1.0, 1.0, 1.0]), "H"))
    return rows


def _write_pdb(path, rows):
    lines = []
    for i, (rec, name, res, chain, seq, xyz, el) in enumerate(rows, 1):
        lines.append(f"{rec:<6}{i:>5} {name:<4} {res:>3} {chain}{seq:>4}    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}"
                     f"  1.00  0.00          {el:>2}")
    path.write_text("\n".join(lines + ["END"]) + "\n")


def _write_cif(path, rows):
    cols = ["group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id", "label_asym_id",
            "label_seq_id", "Cartn_x", "Cartn_y", "Cartn_z", "auth_seq_id", "auth_asym_id", "pdbx_PDB_model_num"]
    lines = ["data_toy", "#", "loop_"] + [f"_atom_site.{c}" for c in cols]
    for i, (rec, name, res, chain, seq, xyz, el) in enumerate(rows, 1):
        lines.append(f"{rec} {i} {el} {name} . {res} X{chain} {seq + 500} {xyz[0]:.3f} {xyz[1]:.3f} {xyz[2]:.3f} "
                     f"{seq} {chain} 1")
    path.write_text("\n".join(lines + ["#"]) + "\n")


def _angle_deg(a, b, axis):
    """Signed angle (deg) from vector ``a`` to ``b`` about unit ``axis``, both projected off it."""
    a, b = a - (a @ axis) * axis, b - (b @ axis) * axis
    return float(np.degrees(np.arctan2(np.cross(a, b) @ axis, a @ b)))


def test_built_in_closure_turns_rigid_domains_on_arcs():
    spec = ClosureSpec(closure_deg=40.0, second_domain_fraction=0.3)
    mol = build_closure_molecule(32, 6.0, spec, n_atoms=1200, seed=1)
    ends = mol.deform(np.array([[-1.0], [0.0], [1.0]]))
    np.testing.assert_allclose(ends[1], mol.xyz_a, atol=1e-12)  # c = 0 is the rest state
    k, p = mol.axis_direction, mol.axis_point_a
    for dom, deg in ((2, 40.0), (3, 12.0)):
        rows = np.flatnonzero((mol.domain == dom) & (mol.weight == mol.weight[mol.domain == dom].max()))
        a, b = ends[0, rows], ends[2, rows]
        d_a = np.linalg.norm(a[:, None] - a[None], axis=-1)
        np.testing.assert_allclose(np.linalg.norm(b[:, None] - b[None], axis=-1), d_a, atol=1e-9)  # rigid
        # arcs: each atom keeps its distance to the axis and its height along it, and turns by the angle
        r = lambda x: np.linalg.norm((x - p) - np.outer((x - p) @ k, k), axis=1)  # noqa: E731
        np.testing.assert_allclose(r(a), r(b), atol=1e-9)
        np.testing.assert_allclose((a - p) @ k, (b - p) @ k, atol=1e-9)
        assert _angle_deg(a[0] - p, b[0] - p, k) == pytest.approx(deg, abs=1e-6)
    body = mol.domain == 0
    assert np.abs(ends[2, body] - mol.xyz_a[body]).max() < 0.05  # the body stays (its atoms in the linker's x range bend slightly)


def test_bimodal_occupancy_puts_most_particles_near_the_ends():
    rng = np.random.default_rng(0)
    c = sample_closure_coords(rng, 20000, "bimodal")[:, 0]
    assert c.min() >= -1 and c.max() <= 1
    near = np.abs(np.abs(c) - 1) < 0.25
    assert 0.85 < near.mean() < 0.93  # 90 % of the particles drawn at the ends, a few of the uniform 10 % too
    assert abs((c < 0).mean() - 0.5) < 0.02
    u = sample_closure_coords(rng, 20000, "uniform")[:, 0]
    assert abs(np.mean(np.abs(u) > 0.75) - 0.25) < 0.02


def test_pdb_and_mmcif_read_alike(tmp_path):
    rows = _toy_atoms()
    _write_pdb(tmp_path / "toy.pdb", rows)
    _write_cif(tmp_path / "toy.cif", rows)
    pdb, cif = read_structure(tmp_path / "toy.pdb"), read_structure(tmp_path / "toy.cif")
    assert len(pdb.xyz_a) == len(rows) - 2  # the water and the hydrogen skipped
    np.testing.assert_allclose(pdb.xyz_a, cif.xyz_a, atol=1e-3)
    assert (pdb.chain == cif.chain).all() and (pdb.residue == cif.residue).all()  # author numbering in both
    assert select(pdb, "A:3-5").sum() == 12 and select(pdb, "A:3-5,B:1").sum() == 16
    with pytest.raises(ValueError, match="--domain: no atoms of chain C"):
        select(pdb, "C:1-5")
    with pytest.raises(ValueError, match="CHAIN:FIRST-LAST"):
        select(pdb, "A1-5")


def test_structure_closure_turns_the_domain_about_the_hinge_residues(tmp_path):
    _write_pdb(tmp_path / "toy.pdb", _toy_atoms())
    spec = ClosureSpec(closure_deg=30.0, second_domain_fraction=0.5, pdb=str(tmp_path / "toy.pdb"),
                       domain="B:1-8", second_domain="A:10-12", hinge="A:8,A:9")
    mol = closure_molecule_from_structure(spec, 48, 2.0)
    atoms = read_structure(tmp_path / "toy.pdb")
    ca = [np.flatnonzero((atoms.chain == "A") & (atoms.residue == r) & (atoms.name == "CA"))[0] for r in (8, 9)]
    np.testing.assert_allclose(mol.axis_point_a, mol.xyz_a[ca[0]], atol=1e-12)  # through the first hinge CA
    np.testing.assert_allclose(mol.xyz_a.mean(0), 0.0, atol=1e-9)  # centred in the box
    assert (mol.domain == 2).sum() == 32 and (mol.domain == 3).sum() == 12
    ends = mol.deform(np.array([[-1.0], [1.0]]))
    static = mol.domain == 0
    np.testing.assert_allclose(ends[:, static], np.broadcast_to(mol.xyz_a[static], ends[:, static].shape), atol=1e-12)
    for dom, deg in ((2, 30.0), (3, 15.0)):
        i = np.flatnonzero(mol.domain == dom)[0]
        assert _angle_deg(ends[0, i] - mol.axis_point_a, ends[1, i] - mol.axis_point_a, mol.axis_direction) == \
            pytest.approx(deg, abs=1e-6)
    with pytest.raises(ValueError, match="use --box"):
        closure_molecule_from_structure(spec, 16, 2.0)
    with pytest.raises(ValueError, match="--hinge must name two residues"):
        closure_molecule_from_structure(ClosureSpec(pdb=spec.pdb, domain="B:1-8", hinge="A:8"), 48, 2.0)
    with pytest.raises(ValueError, match="share"):
        closure_molecule_from_structure(ClosureSpec(pdb=spec.pdb, domain="B:1-8", second_domain="B:8",
                                                    hinge="A:8,A:9"), 48, 2.0)
    with pytest.raises(ValueError, match="need --pdb"):
        ClosureSpec(domain="A:1-3").validate()


def test_closure_dataset_truth_from_a_pdb(tmp_path):
    """The written truth: per-atom displacement at every state, and a molecule rebuilt from
    truth/ alone that moves the atoms exactly so (a user's model cannot be rebuilt otherwise)."""
    _write_pdb(tmp_path / "toy.pdb", _toy_atoms())
    spec = ClosureSpec(pdb=str(tmp_path / "toy.pdb"), domain="B:1-8", hinge="A:8,A:9", occupancy="uniform")
    out = tmp_path / "sim"
    res = simulate_dataset(out, n_particles=40, box=32, apix=3.0, snr=1.0, motion="closure", seed=1, closure=spec)
    truth = json.loads((out / "truth" / "truth.json").read_text())
    assert truth["coordinate_names"] == ["closure"] and truth["closure"]["closure_deg"] == 40.0
    states = np.array([s["coords"] for s in truth["states"]])
    np.testing.assert_allclose(states[:, 0], np.linspace(-1, 1, 9))
    disp = np.load(out / "truth" / "states_displacement_a.npy")
    assert disp.shape == (9, res.n_atoms, 3)
    mol, _ = simulated_molecule(out)
    np.testing.assert_allclose(mol.deform(states) - mol.xyz_a, disp, atol=1e-3)
    moving = np.load(out / "truth" / "atom_domains.npy") == 2
    tip = np.linalg.norm(disp[-1] - disp[0], axis=-1)
    assert tip[moving].max() > 5.0 and tip[~moving].max() == 0.0
    assert "toy.pdb: domain B:1-8" in res.summary()


def test_cli_simulate_closure(tmp_path, capsys):
    from napari_flex3d.cli import main

    _write_pdb(tmp_path / "toy.pdb", _toy_atoms())
    rc = main(["simulate", "--out", str(tmp_path / "s"), "--n-particles", "20", "--box", "32", "--apix", "3",
               "--motion", "closure", "--closure-deg", "25", "--second-domain-fraction", "0.5", "--pdb",
               str(tmp_path / "toy.pdb"), "--domain", "B:1-8", "--second-domain", "A:11-12", "--hinge", "A:8,A:9",
               "--quiet"])
    assert rc == 0
    assert "closing 25 deg, second domain x0.5" in capsys.readouterr().out
    truth = json.loads((tmp_path / "s" / "truth" / "truth.json").read_text())
    assert truth["closure"]["second_domain"] == "A:11-12" and truth["closure"]["hinge"] == "A:8,A:9"
    assert main(["simulate", "--out", str(tmp_path / "t"), "--n-particles", "20", "--box", "32", "--motion",
                 "closure", "--domain", "A:1-3", "--quiet"]) == 2
    assert "need --pdb" in capsys.readouterr().err
