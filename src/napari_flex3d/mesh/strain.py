"""Closed-form singular values of 3 x 3 deformation gradients: the rigidity prior's kernel.

A room of ``mesh``; it imports torch only.

For ``F = I + G`` with singular values ``s1 >= s2 >= s3`` and the sign of ``det F`` carried
onto the smallest (``s^``), :func:`strain_energy` gives ``sum_l (s^_l - 1)^2`` per cell and
:func:`rotation_trace` gives ``p = s1 + s2 + sign(det F) s3 = max_R tr(R^T F)``, both in a fixed
number of elementwise operations (no SVD, no LU, no iterations: a fixed count of operator calls
for a whole batch of cells, whatever its size), in float64. :func:`displacement_strain_energy`
gives the weighted energy summed over a mesh's cells straight from vertex displacements: every
cell's ``G = dD D^-1`` is one sparse product with them (:func:`strain_operator`, made once per
mesh), and its gradient one product back.

* The eigenvalues ``mu`` of ``E = F^T F - I = G + G^T + G^T G`` (``s^2 = 1 + mu``) come from the
  trigonometric solution of the characteristic cubic (Smith 1961): ``m = tr E / 3``,
  ``B = E - m I``, ``q = |B|^2 / 6``, ``r = det B / (2 q^1.5)``,
  ``mu_k = m + 2 sqrt(q) cos(acos(r) / 3 + 2 pi k / 3)``. ``E`` is formed from ``G`` alone, so
  small strains keep their digits, and ``s - 1 = mu / (1 + s)`` has no cancellation: at small
  strains the energy is the squared strains summed.
* An eigenvalue close to another is sensitive to ``r`` (``acos``'s slope), and a square root
  loses the relative accuracy of a tiny one, so ``p`` (and the energy at large strains) takes
  only the better separated extreme eigenvalue from there (the largest where ``r >= 0``), and
  the other two singular values as their sum ``sqrt(S + 2 sqrt(P))`` from their squares' sum
  ``S`` and product ``P``, which the invariants ``I1 = |F|^2``, ``I2 = |cof F|^2`` and
  ``det F`` give without cancellation (:func:`_trace`).
* ``dp/dF`` is the polar rotation of ``F``, written out by the implicit function theorem on
  the quartic whose largest root ``p`` is (:func:`_polar_rotation`). The energy's gradient
  ``2 (F - dp/dF)`` is made in the forward pass from the invariants the energy already has, so
  the backward pass keeps only that gradient (9 numbers a cell, as ``G`` and ``p`` were).

Matrices are held component-major, ``(3, 3, ...)`` with the cells innermost, so every
operation runs over contiguous memory (3-4x faster on the CPU than ``(..., 3, 3)``).
Checked against ``torch.linalg.svdvals``/``eigvalsh``, the Newton iteration it replaced and
50-digit ``mpmath`` eigenvalues in ``tests/mesh/test_strain.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ["strain_energy", "rotation_trace", "StrainOperator", "strain_operator", "displacement_strain_energy"]

#: Largest ``|mu|`` (an eigenvalue of ``F^T F - I``) up to which the energy is summed from the strains
#: (to the last digit at small strains); beyond it :func:`_trace`'s form (to the last digit at large ones).
SMALL_STRAIN = 0.5

_TINY = 1e-300
_CONSTANTS: dict = {}


def _constants(device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I (3, 3, 1), phases (3, 1))``: the identity to broadcast over cells, and the eigenvalues'
    phases ``2 pi k / 3`` (largest, smallest, middle), made once per device and dtype."""
    key = (device, dtype)
    if key not in _CONSTANTS:
        eye = torch.eye(3, dtype=dtype, device=device)[:, :, None]
        phases = torch.tensor([0.0, 2.0 * math.pi / 3.0, 4.0 * math.pi / 3.0], device=device, dtype=dtype)[:, None]
        _CONSTANTS[key] = (eye, phases)
    return _CONSTANTS[key]


def _next_rows(device) -> tuple[torch.Tensor, torch.Tensor]:
    """``([1, 2, 0], [2, 0, 1])``: each row's next two rows, made once per device."""
    key = (device, "rows")
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (torch.tensor([1, 2, 0], device=device), torch.tensor([2, 0, 1], device=device))
    return _CONSTANTS[key]


def _components(M: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3) -> (3, 3, n)``, contiguous, the cells flattened."""
    return M.reshape(-1, 3, 3).permute(1, 2, 0).contiguous()


def _determinant(M: torch.Tensor) -> torch.Tensor:
    """``det M`` of component-major ``M (3, 3, n)``: the triple product of its rows."""
    return (M[0] * torch.linalg.cross(M[1], M[2], dim=0)).sum(0)


def _cofactors(M: torch.Tensor) -> torch.Tensor:
    """``cof M (3, 3, n)`` (``d det / dM``): each row the cross product of the next two (one cross
    product of the rows taken in turn: 17 operator calls, against 24 for three crosses stacked)."""
    after, after_next = _next_rows(M.device)
    return torch.linalg.cross(M.index_select(0, after), M.index_select(0, after_next), dim=1)


def _strain_eigenvalues(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mu (3, n), top (n,) bool, E (3, 3, n))`` for component-major float64 ``G (3, 3, n)``: the
    eigenvalues of ``E = G + G^T + G^T G`` (largest, smallest, middle), whether the largest is the
    better separated one (else the smallest is), and ``E`` itself. See the module notes."""
    eye, phases = _constants(G.device, G.dtype)
    E = G + G.transpose(0, 1) + (G.unsqueeze(2) * G.unsqueeze(1)).sum(0)  # (G^T G)_jk = sum_i G_ij G_ik
    m = E.diagonal(0, 0, 1).sum(-1) / 3.0  # tr E / 3: one reduction, not three selections added
    B = E - m * eye
    q = (B * B).sum((0, 1)) / 6.0
    root_q = q.sqrt()
    # q = 0 (all eigenvalues equal): det B = 0 too, and any phase gives m
    r = (_determinant(B) / (2.0 * q * root_q).clamp_min(_TINY)).clamp(-1.0, 1.0)
    return m + 2.0 * root_q * torch.cos(torch.acos(r) / 3.0 + phases), r >= 0.0, E  # a float 0: one operator call


def _trace(F: torch.Tensor, lam: torch.Tensor, top: torch.Tensor):
    """``(p, det F, energy, cof F, I1)`` of component-major float64 ``F (3, 3, n)``, from the eigenvalues
    ``lam = 1 + mu (3, n)`` of ``F^T F`` and ``top`` of :func:`_strain_eigenvalues`.

    Largest ``l1 = 1 + mu_1`` better separated (``top``): ``P = det^2 / l1``, ``S = (I2 - P) / l1``,
    the pair's signed sum ``sqrt(S + 2 det / s1)`` (``2 det / s1 = +-2 s2 s3``). Else the smallest
    ``l3``: ``S = I1 - l3``, ``P = I2 - l3 S``, the signed ``s^3 = det / sqrt(P)``. Then ``p`` is the
    separated singular value plus the pair's sum, and the energy ``(s^ - 1)^2 + S - 2 pair + 2``
    (exact, but losing digits to cancellation at small strains).
    """
    cof = _cofactors(F)
    det = (F[0] * cof[0]).sum(0)
    i1 = (F * F).sum((0, 1))
    i2 = (cof * cof).sum((0, 1))
    l1 = lam[0].clamp_min(_TINY)
    s1 = l1.sqrt()
    l3 = lam[1].clamp_min(0.0)
    rest = i1 - l3
    root_p = (i2 - l3 * rest).clamp_min(0.0).sqrt()
    squares = torch.where(top, (i2 - det * det / l1) / l1, rest)  # S: the pair's squares summed
    single = torch.where(top, s1, det / root_p.clamp_min(_TINY))  # the separated singular value, signed
    pair = (squares + torch.where(top, 2.0 * det / s1, 2.0 * root_p)).clamp_min(0.0).sqrt()
    single_strain = single - 1.0
    return single + pair, det, single_strain * single_strain + squares - 2.0 * pair + 2.0, cof, i1


def _slope_floor(i1: torch.Tensor) -> torch.Tensor:
    return 1e-9 * i1.clamp_min(1e-200) ** 1.5  # keeps the gradient finite where the largest root is double


def _trace_gradient(F: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``dp/dF (3, 3, n)`` at ``p = max_R tr(R^T F)`` (component-major ``F``): the polar rotation of ``F``
    (:func:`_polar_rotation`, its invariants made here)."""
    cof = _cofactors(F)
    C = (F.unsqueeze(2) * F.unsqueeze(1)).sum(0)  # F^T F
    return _polar_rotation(F, p, cof, (F[0] * cof[0]).sum(0), (F * F).sum((0, 1)), C)


def _polar_rotation(F: torch.Tensor, p: torch.Tensor, cof: torch.Tensor, det: torch.Tensor, i1: torch.Tensor,
                    C: torch.Tensor) -> torch.Tensor:
    """``dp/dF (3, 3, n)`` from ``F``, ``p``, ``cof F``, ``det F``, ``I1 = |F|^2`` and ``C = F^T F``.

    ``p`` is the largest root of ``q(p; I1, I2, det) = p^4 - 2 I1 p^2 - 8 det p + I1^2 - 4 I2`` (its
    roots are the four sign patterns of ``s^`` with an even number of flips), so by the implicit
    function theorem ``dp/dF = -(q_I1 dI1/dF + q_I2 dI2/dF + q_det dDet/dF) / q_p``, with
    ``dI1/dF = 2F``, ``dI2/dF = 2 (I1 F - F F^T F)`` and ``dDet/dF = cof F``:
    ``dp/dF = (4 (p^2 - I1) F + 8 (I1 F - F F^T F) + 8 p cof F) / q_p``,
    ``q_p = 4 p (p^2 - I1) - 8 det = 8 (s1 + s2)(s1 + s^3)(s2 + s^3)``.
    """
    FC = (F.unsqueeze(2) * C).sum(1)  # (F F^T F)_ik = sum_j F_ij C_jk
    excess = p * p - i1
    slope = (4.0 * excess * p - 8.0 * det).clamp_min(_slope_floor(i1))
    return ((4.0 * excess + 8.0 * i1) * F - 8.0 * FC + 8.0 * p * cof) / slope


class _RotationTrace(torch.autograd.Function):
    """:func:`rotation_trace` of float64 ``F (..., 3, 3)``, keeping only ``F`` and ``p`` for the backward pass."""

    @staticmethod
    def forward(ctx, F: torch.Tensor) -> torch.Tensor:
        Fc = _components(F)
        eye, _ = _constants(F.device, F.dtype)
        mu, top, _ = _strain_eigenvalues(Fc - eye)
        p = _trace(Fc, 1.0 + mu, top)[0]
        ctx.save_for_backward(Fc, p)
        return p.reshape(F.shape[:-2])

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor) -> torch.Tensor:
        Fc, p = ctx.saved_tensors
        grad = grad_p.reshape(-1) * _trace_gradient(Fc, p)  # (3, 3, n)
        return grad.permute(2, 0, 1).reshape(grad_p.shape + (3, 3))


def _energy_terms(G: torch.Tensor, gradient: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(energy (n,), dE/dG (3, 3, n) or None)`` of component-major float64 ``G = F - I (3, 3, n)``:
    ``sum_l (s^_l - 1)^2`` per cell and, if asked, its gradient ``2 (F - dp/dF)``, from the same
    invariants (``cof F``, ``det F``, ``|F|^2``, ``F^T F = I + E``) the energy needs."""
    eye, _ = _constants(G.device, G.dtype)
    mu, top, E = _strain_eigenvalues(G)
    lam = 1.0 + mu  # (3, n) eigenvalues of F^T F
    F = G + eye
    p, det, large, cof, i1 = _trace(F, lam, top)
    s = lam.clamp_min(0.0).sqrt()  # (3, n) singular values, the smallest at 1
    strain = mu / (1.0 + s)  # s - 1 without cancellation
    small = (strain * strain).sum(0)
    small = torch.where(det < 0.0, small + 4.0 * s[1], small)  # an inverted cell: (-s3 - 1)^2 = (s3 - 1)^2 + 4 s3
    energy = torch.where(torch.linalg.vector_norm(mu, math.inf, 0) <= SMALL_STRAIN, small, large)  # max |mu|
    if not gradient:
        return energy, None
    return energy, 2.0 * (F - _polar_rotation(F, p, cof, det, i1, E + eye))


class _StrainEnergy(torch.autograd.Function):
    """:func:`strain_energy`, keeping only its gradient ``dE/dG`` (component-major, made in the forward
    pass from the energy's own invariants) and ``D^-1`` for the backward pass: autograd through these
    formulas would keep several times as much (a training step at box 128 on an H100 went from 3.3 to
    6.2 GB when the SVD was replaced by autograd through the first SVD-free version,
    ``benchmarks/rigidity.py``)."""

    @staticmethod
    def forward(ctx, dD: torch.Tensor, rest_inv: torch.Tensor) -> torch.Tensor:
        G = _components(dD @ rest_inv)  # (3, 3, n)
        energy, grad_g = _energy_terms(G, gradient=True)
        ctx.save_for_backward(grad_g, rest_inv)
        return energy.reshape(dD.shape[:-2])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_g, rest_inv = ctx.saved_tensors
        grad_g = (grad.reshape(-1) * grad_g).permute(2, 0, 1).reshape(grad.shape + (3, 3))  # (..., 3, 3)
        return grad_g @ rest_inv.transpose(-1, -2), None


def strain_energy(dD: torch.Tensor, rest_inv: torch.Tensor) -> torch.Tensor:
    """Per cell ``sum_l (s^_l - 1)^2`` ``(b, t)`` of ``F = I + dD D^-1``, from float64 edge changes ``dD (b, t, 3, 3)``
    and rest edge inverses ``D^-1 (t, 3, 3)``; differentiable in ``dD``, its gradient ``2 (F - dp/dF) D^-T``
    (``sum_l (s^_l - 1)^2 = |F|^2 - 2 p + 3``)."""
    return _StrainEnergy.apply(dD, rest_inv)


def rotation_trace(F: torch.Tensor) -> torch.Tensor:
    """``max_R tr(R^T F)`` over rotations ``R``, i.e. ``s1 + s2 + sign(det F) s3``, for ``F (..., 3, 3)``
    (float64 inside, returned in ``F``'s dtype); differentiable, its gradient the polar rotation of ``F``."""
    return _RotationTrace.apply(F.to(torch.float64)).to(F.dtype)


# ----------------------------------------------------------------------------- from vertex displacements


class StrainOperator(NamedTuple):
    """``G = F - I`` of every cell as one sparse product with the vertex displacements: ``forward (9 t, 3 v)``
    float64, row ``(3 i + k) t + c`` (component-major ``G_ik`` of cell ``c``), column ``3 a + i`` (vertex
    ``a``, axis ``i``); ``transpose (3 v, 9 t)`` for the gradient; ``n_cells``, ``n_vertices``."""

    forward: torch.Tensor
    transpose: torch.Tensor
    n_cells: int
    n_vertices: int


#: The operators last made, each with the ``D^-1`` and cells tensors it was made from (held, so that an
#: identity match cannot be a new tensor at a freed one's address) and their versions.
_OPERATORS: list = []
_OPERATORS_KEPT = 4


def strain_operator(rest_inv: torch.Tensor, cells: torch.Tensor, n_vertices: int) -> StrainOperator:
    """The :class:`StrainOperator` of a mesh from ``D^-1 (t, 3, 3)`` and ``cells (t, 4)``, on ``rest_inv``'s device;
    made once per pair of tensors (again when either changes in place).

    ``dD D^-1 = sum_a x_a W_a`` over a cell's four vertices, with ``W_a`` row ``a - 1`` of ``D^-1`` for
    ``a = 1..3`` and ``W_0 = -`` the sum of its rows (each product of a float32 displacement and a
    float32 ``D^-1`` entry exact in float64)."""
    key = (rest_inv._version, cells._version, int(n_vertices))
    for entry in _OPERATORS:
        if entry[0] is rest_inv and entry[1] is cells and entry[2] == key:
            return entry[3]
    inv = rest_inv.detach().to(torch.float64)  # (t, 3, 3)
    t, dev = inv.shape[0], inv.device
    W = torch.cat([-inv.sum(1, keepdim=True), inv], 1)  # (t, 4, 3): W[c, a, k]
    i = torch.arange(3, device=dev)
    c = torch.arange(t, device=dev)
    rows = ((i[:, None, None, None] * 3 + i[None, :, None, None]) * t + c[:, None]).expand(3, 3, t, 4)
    cols = (cells.to(dev)[None, None] * 3 + i[:, None, None, None]).expand(3, 3, t, 4)
    values = W.permute(2, 0, 1)[None].expand(3, 3, t, 4)  # (i, k, c, a)
    index = torch.stack([rows.reshape(-1), cols.reshape(-1)])
    forward = torch.sparse_coo_tensor(index, values.reshape(-1), (9 * t, 3 * n_vertices), check_invariants=False).coalesce()
    transpose = torch.sparse_coo_tensor(index.flip(0), values.reshape(-1), (3 * n_vertices, 9 * t), check_invariants=False).coalesce()
    op = StrainOperator(forward, transpose, t, int(n_vertices))
    _OPERATORS.insert(0, (rest_inv, cells, key, op))
    del _OPERATORS[_OPERATORS_KEPT:]
    return op


def _displacement_energy(disp: torch.Tensor, op: StrainOperator, weights, gradient: bool):
    """``(energy (b,) float64, dE/dG (3, 3, t b) or None)`` of ``disp (b, v, 3)``, each cell's energy
    times its weight (``weights (t,)`` float64 or None) and summed over the cells."""
    b = disp.shape[0]
    x = disp.reshape(b, 3 * op.n_vertices).t().to(torch.float64)  # (3 v, b)
    G = torch.sparse.mm(op.forward, x).view(3, 3, op.n_cells * b)  # (3, 3, t b): cells outer, particles inner
    energy, grad_g = _energy_terms(G, gradient)
    per_cell = energy.view(op.n_cells, b)  # (t, b)
    if weights is None:
        return per_cell.sum(0), grad_g
    if grad_g is not None:
        grad_g = (grad_g.view(3, 3, op.n_cells, b) * weights[:, None]).view(3, 3, -1)
    return weights @ per_cell, grad_g


class _DisplacementStrain(torch.autograd.Function):
    """:func:`displacement_strain_energy`, keeping only ``dE/dG`` (the weights in it) for the backward pass."""

    @staticmethod
    def forward(ctx, disp: torch.Tensor, op: StrainOperator, weights) -> torch.Tensor:
        energy, grad_g = _displacement_energy(disp, op, weights, gradient=True)
        ctx.save_for_backward(grad_g)
        ctx.op = op
        return energy.to(disp.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (grad_g,) = ctx.saved_tensors
        op = ctx.op
        b = grad.shape[0]
        grad_x = torch.sparse.mm(op.transpose, grad_g.view(-1, b) * grad.to(torch.float64))  # (3 v, b)
        return grad_x.t().reshape(b, op.n_vertices, 3).to(grad.dtype), None, None


def displacement_strain_energy(disp: torch.Tensor, op: StrainOperator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_c w_c sum_l (s^_l(F_c) - 1)^2`` ``(b,)`` (in ``disp``'s dtype, summed in float64) of vertex
    displacements ``disp (b, v, 3)``, with ``F_c = I + dD_c D_c^-1`` through ``op`` (:func:`strain_operator`)
    and per-cell ``weights (t,)`` (``None``: 1). Differentiable in ``disp``: its gradient is made with the
    energy (one sparse product back to the vertices in the backward pass); without one needed, not made."""
    w = None if weights is None else weights.to(torch.float64)
    if torch.is_grad_enabled() and disp.requires_grad:
        return _DisplacementStrain.apply(disp, op, w)
    return _displacement_energy(disp, op, w, gradient=False)[0].to(disp.dtype)
