"""Closed-form singular values of deformation gradients (mesh/strain.py) against independent oracles."""

from __future__ import annotations

import mpmath
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from napari_flex3d.mesh.strain import rotation_trace, strain_energy

EYE = torch.eye(3, dtype=torch.float64)
FLIP = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)


def _cases(n: int = 300) -> dict:
    g = torch.Generator().manual_seed(0)
    rot = [torch.as_tensor(Rotation.random(n, random_state=k).as_matrix()) for k in (1, 2)]
    stretch = torch.diag_embed(torch.exp(torch.empty(n, 3, dtype=torch.float64).uniform_(-3.5, 3.5, generator=g)))
    pair = torch.diag_embed(torch.tensor([2.0, 1e-3, 1.001e-3], dtype=torch.float64).expand(n, 3))  # a close, tiny pair
    return {
        "tiny": EYE + 1e-7 * torch.randn(n, 3, 3, dtype=torch.float64, generator=g),
        "moderate": EYE + 0.3 * torch.randn(n, 3, 3, dtype=torch.float64, generator=g),
        "random": torch.randn(n, 3, 3, dtype=torch.float64, generator=g),
        "stretched": rot[0] @ stretch @ rot[1],
        "inverted": (EYE + 0.3 * torch.randn(n, 3, 3, dtype=torch.float64, generator=g)) * FLIP,
        "collapsing pair": rot[0] @ pair @ rot[1],
    }


def _newton_trace(F: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """The implementation the closed form replaced: the quartic's largest root by Newton's method
    from above (here with more steps than its 16, so that it converges on every case)."""
    c = torch.linalg.det(F)
    a = (F * F).sum((-2, -1))
    cof = torch.linalg.det(F)[..., None, None] * torch.linalg.inv(F).transpose(-1, -2)
    b = (cof * cof).sum((-2, -1))
    p = torch.sqrt(a + 2.0 * torch.sqrt(3.0 * b))
    for _ in range(steps):
        t = p * p - a
        p = p - ((t - a) * p * p - 8.0 * c * p + a * a - 4.0 * b) / (4.0 * t * p - 8.0 * c).clamp_min(1e-300)
    return p


def _mp_reference(F: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(p, energy)`` from 40-digit eigenvalues of ``F^T F`` (``mpmath``)."""
    mpmath.mp.dps = 40
    p, energy = [], []
    for M in F.numpy():
        A = mpmath.matrix(M.tolist())
        s = sorted((mpmath.sqrt(max(e, 0)) for e in mpmath.eigsy(A.T * A)[0]), reverse=True)
        s[2] *= 1 if mpmath.det(A) >= 0 else -1
        p.append(float(sum(s)))
        energy.append(float(sum((x - 1) ** 2 for x in s)))
    return np.array(p), np.array(energy)


def test_trace_and_energy_match_40_digit_eigenvalues():
    # to the last digits: small strains through the strains' own cancellation-free form (the
    # quartic's |F|^2 - 2 p + 3 kept 6e-2 of the energy at strains of 1e-7), tiny singular values
    # through their pair's sum and product
    for name, F in _cases(40).items():
        p_ref, e_ref = _mp_reference(F)
        p = rotation_trace(F).numpy()
        energy = strain_energy((F - EYE)[None], EYE.expand(len(F), 3, 3))[0].numpy()
        assert np.abs(p - p_ref).max() / np.abs(p_ref).max() < 1e-14, name
        assert (np.abs(energy - e_ref) / np.maximum(e_ref, 1e-300)).max() < 1e-12, name


def test_trace_matches_eigvalsh_newton_and_its_gradient_the_polar_rotation():
    for name, F in _cases().items():
        lam = torch.linalg.eigvalsh(F.transpose(-1, -2) @ F).clamp_min(0).sqrt()  # ascending
        by_eig = lam[:, 2] + lam[:, 1] + torch.sign(torch.linalg.det(F)) * lam[:, 0]
        new = F.clone().requires_grad_(True)
        p = rotation_trace(new)
        p.sum().backward()
        scale = p.detach().abs().clamp_min(1)
        assert ((p.detach() - by_eig).abs() / scale).max() < 1e-12, name
        assert ((p.detach() - _newton_trace(F)).abs() / scale).max() < 1e-11, name
        u, _, vh = torch.linalg.svd(F)  # the polar rotation U diag(1, 1, sign det) V^T
        d = torch.ones(len(F), 3, dtype=torch.float64)
        d[:, 2] = torch.sign(torch.linalg.det(F))
        polar = u @ torch.diag_embed(d) @ vh
        assert (new.grad - polar).abs().max() < 1e-7, name


def test_gradients_pass_gradcheck():
    g = torch.Generator().manual_seed(1)
    F = (EYE + 0.4 * torch.randn(6, 3, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(rotation_trace, (F,), eps=1e-6, atol=1e-7)
    dD = (0.3 * torch.randn(2, 5, 3, 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    inv = torch.randn(5, 3, 3, dtype=torch.float64, generator=g) + 2.0 * EYE
    assert torch.autograd.gradcheck(lambda d: strain_energy(d, inv), (dD,), eps=1e-6, atol=1e-7)


def test_exact_mirror_costs_four():
    # a triple root of the quartic: Newton's method reached it to 1e-3 only
    mirror = torch.as_tensor(Rotation.random(8, random_state=5).as_matrix()) * FLIP
    assert torch.allclose(strain_energy((mirror - EYE)[None], EYE.expand(8, 3, 3)), torch.full((1, 8), 4.0, dtype=torch.float64),
                          rtol=1e-12, atol=0)


def test_energy_and_gradient_match_svd_and_cofactors_match_inverse():
    # the energy sum (s^_l - 1)^2 and its gradient by autograd through the SVD (distinct singular
    # values: the SVD's gradient is defined), and cof F = det F F^-T, to 1e-10 in float64
    from napari_flex3d.mesh.strain import _cofactors, _components

    for name in ("moderate", "random", "inverted"):
        F = _cases(200)[name]
        ref = F.clone().requires_grad_(True)
        s = torch.linalg.svdvals(ref)
        signed = torch.cat([s[:, :2], (torch.sign(torch.linalg.det(F)) * s[:, 2])[:, None]], 1)
        ((signed - 1.0) ** 2).sum().backward()
        dD = (F - EYE)[None].clone().requires_grad_(True)
        energy = strain_energy(dD, EYE.expand(len(F), 3, 3))
        energy.sum().backward()
        scale = ((signed.detach() - 1.0) ** 2).sum(1).clamp_min(1.0)
        assert ((energy[0].detach() - ((signed.detach() - 1.0) ** 2).sum(1)).abs() / scale).max() < 1e-10, name
        assert ((dD.grad[0] - ref.grad).abs().amax((1, 2)) / scale).max() < 1e-10, name
        cof = _cofactors(_components(F)).permute(2, 0, 1)
        expected = torch.linalg.det(F)[:, None, None] * torch.linalg.inv(F).transpose(-1, -2)
        assert ((cof - expected).abs().amax((1, 2)) / F.abs().amax((1, 2)) ** 2).max() < 1e-10, name


def _random_cells(t: int = 7, v: int = 9, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    cells = torch.stack([torch.randperm(v, generator=g)[:4] for _ in range(t)])  # (t, 4) distinct vertices
    vertices = 10.0 * torch.randn(v, 3, dtype=torch.float64, generator=g)
    edges = (vertices[cells[:, 1:]] - vertices[cells[:, :1]]).transpose(-1, -2)  # (t, 3, 3) columns = edges
    return vertices, cells, torch.linalg.inv(edges), g


def test_displacement_energy_equals_the_edge_form_with_its_gradient():
    # the sparse operator (F - I of every cell from the vertex displacements, mesh/strain.py) and the
    # written-out gradient against the edge matrices' form and autograd through its gather, float64,
    # with a translation of 100 Å: the operator sums each cell's four vertices' products, so it
    # loses about eps * |translation| / |strain| relative (2e-9 here at strains of 1e-6)
    from napari_flex3d.mesh.strain import displacement_strain_energy, strain_operator

    vertices, cells, inv, g = _random_cells()
    w = torch.rand(len(cells), dtype=torch.float64, generator=g) + 0.5
    op = strain_operator(inv, cells, len(vertices))
    assert strain_operator(inv, cells, len(vertices)) is op  # made once
    for scale in (1e-6, 0.3, 3.0):
        d = scale * torch.randn(4, len(vertices), 3, dtype=torch.float64, generator=g) + 100.0
        mine = d.clone().requires_grad_(True)
        energy = displacement_strain_energy(mine, op, w)
        (energy * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
        ref = d.clone().requires_grad_(True)
        dD = (ref[:, cells[:, 1:]] - ref[:, cells[:, :1]]).transpose(-1, -2)  # (b, t, 3, 3)
        expected = (strain_energy(dD, inv) * w).sum(-1)
        (expected * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
        assert ((energy - expected).abs() / expected).max() < 1e-8, scale
        assert (mine.grad - ref.grad).abs().max() < 1e-8 * ref.grad.abs().max(), scale
        with torch.no_grad():
            assert torch.equal(displacement_strain_energy(d, op, w), energy.detach())  # no gradient made
    d = (0.3 * torch.randn(2, len(vertices), 3, dtype=torch.float64, generator=g)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: displacement_strain_energy(x, op, w), (d,), eps=1e-6, atol=1e-7)
    inv.mul_(2.0)  # changed in place: the operator is made again
    assert strain_operator(inv, cells, len(vertices)) is not op
