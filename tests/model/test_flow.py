"""Flow generator: near-zero start, vertex mask, exact linear FEM interpolation, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.model.flow import FlowGenerator, fem_matrix, interpolate_vertex_flow, sparse_to_barycentric

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _two_tets():
    """Two tetrahedra sharing a face, and points inside them (with barycentric truth)."""
    vertices = torch.tensor(
        [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0], [10.0, 10.0, 10.0]]
    )
    cells = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    rng = np.random.default_rng(0)
    bary = rng.dirichlet(np.ones(4), size=40)  # (40, 4) weights
    cell_of = rng.integers(0, 2, size=40)
    pts = np.einsum("nk,nkd->nd", bary, vertices.numpy()[cells.numpy()[cell_of]])
    return vertices, cells, torch.as_tensor(pts, dtype=torch.float32), cell_of, bary


def _manual_barycentric(vertices, cells, pts):
    """Oracle: solve for the barycentric coordinates of each point in every cell, keep
    the cell where all four are >= 0."""
    v = vertices.double().numpy()
    out_idx, out_w = [], []
    for p in pts.double().numpy():
        for c in cells.numpy():
            t = np.column_stack([v[c[1]] - v[c[0]], v[c[2]] - v[c[0]], v[c[3]] - v[c[0]]])
            l123 = np.linalg.solve(t, p - v[c[0]])
            lam = np.concatenate([[1 - l123.sum()], l123])
            if (lam >= -1e-9).all():
                out_idx.append(c)
                out_w.append(lam)
                break
    return torch.as_tensor(np.array(out_idx)), torch.as_tensor(np.array(out_w), dtype=torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_fresh_flow_is_near_zero(device):
    torch.manual_seed(0)
    flow = FlowGenerator(latent_dim=2, n_vertices=500).to(device)  # cryoSPARC default 6 x 64
    d = flow(torch.randn(64, 2, device=device) * 2)
    assert d.shape == (64, 500, 3)
    assert d.abs().max() < 0.01  # Å: near zero
    assert d.abs().max() > 0  # but not exactly zero: every layer gets a gradient


def test_architecture():
    flow = FlowGenerator(latent_dim=3, n_vertices=7, hidden=32, layers=4)
    linears = [m for m in flow.modules() if isinstance(m, torch.nn.Linear)]
    relus = [m for m in flow.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(linears) == 5 and len(relus) == 4
    assert linears[0].in_features == 3 and linears[-1].out_features == 21
    assert linears[-1].bias is None  # final layer linear without bias


def test_vertex_mask_zeroes_vertices():
    torch.manual_seed(1)
    mask = torch.ones(50)
    mask[10:30] = 0.0
    mask[40] = 0.5
    flow = FlowGenerator(2, 50, hidden=16, layers=2, vertex_mask=mask, init_std_a=1.0)
    free = FlowGenerator(2, 50, hidden=16, layers=2, init_std_a=1.0)
    free.load_state_dict({k: v for k, v in flow.state_dict().items() if k != "vertex_mask"}, strict=False)
    z = torch.randn(8, 2)
    d, d_free = flow(z), free(z)
    assert d[:, 10:30].abs().max() == 0
    assert d[:, :10].abs().min() >= 0 and d[:, :10].abs().max() > 1e-3
    torch.testing.assert_close(d[:, 40], 0.5 * d_free[:, 40])
    torch.testing.assert_close(d[:, 30:40], d_free[:, 30:40])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="vertex_mask"):
        FlowGenerator(2, 5, vertex_mask=torch.ones(4))
    with pytest.raises(ValueError, match="z must have shape"):
        FlowGenerator(2, 5)(torch.zeros(3, 4))


def test_fem_equals_manual_barycentric():
    vertices, cells, pts, cell_of, bary = _two_tets()
    idx, w = _manual_barycentric(vertices, cells, pts)
    torch.testing.assert_close(w, torch.as_tensor(bary, dtype=torch.float32), atol=1e-5, rtol=0)
    d = torch.randn(3, 5, 3)  # (b, v, 3)
    u = interpolate_vertex_flow(d, idx, w)  # (b, n, 3)
    manual = torch.stack(
        [sum(w[n, k] * d[:, idx[n, k]] for k in range(4)) for n in range(pts.shape[0])], dim=1
    )
    torch.testing.assert_close(u, manual)
    # linear FEM reproduces an affine field exactly
    a, t = torch.randn(3, 3), torch.randn(3)
    d_aff = (vertices @ a.T + t)[None]
    torch.testing.assert_close(interpolate_vertex_flow(d_aff, idx, w)[0], pts @ a.T + t, atol=1e-4, rtol=1e-4)


def test_sparse_matrix_rows_match_dense_product():
    vertices, cells, pts, _, _ = _two_tets()
    idx, w = _manual_barycentric(vertices, cells, pts)
    n = pts.shape[0]
    rows = torch.arange(n).repeat_interleave(4)
    b = torch.sparse_coo_tensor(torch.stack([rows, idx.reshape(-1)]), w.reshape(-1), (n + 2, 5))  # 2 empty rows
    i2, w2 = sparse_to_barycentric(b)
    d = torch.randn(2, 5, 3)
    dense = torch.einsum("nv,bvd->bnd", b.to_dense(), d)
    torch.testing.assert_close(interpolate_vertex_flow(d, i2, w2), dense)
    assert (w2[n:] == 0).all()


def test_fem_product_with_its_transpose_made_once():
    """The FEM product's gradient through the transpose made once: the dense adjoint's numbers (float64),
    and torch.sparse.mm's own gradient bit for bit (float32); the flow MLP as F.linear + ReLU, bit for bit."""
    vertices, cells, pts, _, _ = _two_tets()
    idx, w = _manual_barycentric(vertices, cells, pts)
    for dtype in (torch.float64, torch.float32):
        fem = fem_matrix(idx, w, 5, dtype)
        d = torch.randn(3, 5, 3, dtype=dtype, requires_grad=True)
        g = torch.randn(3, pts.shape[0], 3, dtype=dtype)
        u = interpolate_vertex_flow(d, idx, w, fem=fem, fem_t=fem.t())
        (grad,) = torch.autograd.grad(u, d, g)
        (builtin,) = torch.autograd.grad(interpolate_vertex_flow(d, idx, w, fem=fem), d, g)
        dense = torch.einsum("nv,bnd->bvd", fem.to_dense(), g)  # B^T g
        torch.testing.assert_close(grad, dense, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)
        assert torch.equal(grad, builtin)
    flow = FlowGenerator(2, 30, hidden=8, layers=3)
    z = torch.randn(5, 2)
    x = z
    for m in flow.hidden:
        x = m(x)
    assert torch.equal(flow(z), torch.nn.functional.linear(x, flow.out.weight).reshape(5, 30, 3))


def test_gradients_reach_every_layer():
    torch.manual_seed(2)
    flow = FlowGenerator(2, 30)
    loss = (flow(torch.randn(16, 2)) - 1.0).pow(2).sum()
    loss.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_written_out_backward_matches_autograd():
    # the MLP's backward by hand (model/flow.py _Mlp) against autograd through the same layers, float64
    torch.manual_seed(2)
    flow = FlowGenerator(2, 6, hidden=8, layers=3, init_std_a=0.5).double()
    z = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 6, 3, dtype=torch.float64)
    (flow(z) * w).sum().backward()
    mine = [z.grad] + [p.grad for p in flow.parameters()]
    z.grad = None
    flow.zero_grad(set_to_none=True)
    x = z
    for layer in flow.hidden:
        x = layer(x)
    ((flow.out(x).reshape(5, 6, 3) * flow.vertex_mask[:, None]) * w).sum().backward()
    reference = [z.grad] + [p.grad for p in flow.parameters()]
    for a, b in zip(mine, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    params = [t.detach().requires_grad_(True) for t in flow.parameters()]
    from napari_flex3d.model.flow import _Mlp

    assert torch.autograd.gradcheck(lambda zz, *ps: _Mlp.apply(zz, *ps), (z.detach().requires_grad_(True), *params))
