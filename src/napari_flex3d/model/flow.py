"""The flow generator ``f_theta``: latent ``z (K)`` -> displacement of every mesh vertex.

A room of ``model``; it imports torch only.

An MLP ``K -> H x L (ReLU) -> 3 v`` whose last layer is linear without bias and starts
near zero, so a fresh model is (almost) the rigid model (paper §2, "Flow generator").
A per-vertex motion mask ``m in [0, 1]`` multiplies the displacements, so masked
vertices (e.g. a micelle) never move. Voxel flow is the exact linear FEM interpolation
of these vertex displacements (:func:`interpolate_vertex_flow`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["FlowGenerator", "interpolate_vertex_flow", "fem_matrix", "sparse_to_barycentric"]


class FlowGenerator(nn.Module):
    """MLP from latent coordinates to vertex displacements in Å.

    Parameters
    ----------
    latent_dim
        ``K``, the number of latent coordinates (cryoSPARC default 2).
    n_vertices
        ``v``, the number of mesh vertices.
    hidden, layers
        Width ``H`` and count ``L`` of the hidden ReLU layers (cryoSPARC: 64 x 6).
    vertex_mask
        ``(v,)`` motion mask in [0, 1]; ``None`` lets every vertex move.
    init_std_a
        Standard deviation of the final layer's weights: with ``z ~ N(0, 1)`` the first
        displacements are of order ``init_std_a * sqrt(H)`` Å at most (near zero), but
        not exactly zero, so every layer gets a gradient from the first step.
    """

    def __init__(
        self,
        latent_dim: int,
        n_vertices: int,
        hidden: int = 64,
        layers: int = 6,
        vertex_mask: torch.Tensor | None = None,
        init_std_a: float = 1e-4,
    ):
        super().__init__()
        if latent_dim < 1 or n_vertices < 1 or hidden < 1 or layers < 1:
            raise ValueError(
                f"FlowGenerator needs positive sizes, got latent_dim={latent_dim}, "
                f"n_vertices={n_vertices}, hidden={hidden}, layers={layers}"
            )
        self.latent_dim = int(latent_dim)
        self.n_vertices = int(n_vertices)
        blocks: list[nn.Module] = []
        width = self.latent_dim
        for _ in range(int(layers)):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.hidden = nn.Sequential(*blocks)
        self.out = nn.Linear(width, 3 * self.n_vertices, bias=False)  # final layer: linear, no bias
        nn.init.normal_(self.out.weight, std=init_std_a)
        if vertex_mask is None:
            vertex_mask = torch.ones(self.n_vertices)
        vertex_mask = torch.as_tensor(vertex_mask, dtype=torch.float32)
        if vertex_mask.shape != (self.n_vertices,):
            raise ValueError(f"vertex_mask must have shape ({self.n_vertices},), got {tuple(vertex_mask.shape)}")
        self.register_buffer("vertex_mask", vertex_mask.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Displacements ``(b, v, 3)`` xyz Å of every vertex for latents ``z (b, K)``."""
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (b, {self.latent_dim}), got {tuple(z.shape)}")
        params = [t for layer in self.hidden[::2] for t in (layer.weight, layer.bias)] + [self.out.weight]
        if torch.is_grad_enabled() and (z.requires_grad or any(t.requires_grad for t in params)):
            out = _Mlp.apply(z, *params)  # its backward written out: a few calls a layer, not autograd's ~16
        else:
            out = _mlp(z, params)[-1]
        d = out.reshape(z.shape[0], self.n_vertices, 3)  # (b, v, 3)
        return d * self.vertex_mask[:, None]


def _mlp(z: torch.Tensor, params: list) -> list:
    """The flow MLP's activations ``[z, x_1, ..., x_L, out]`` for ``params = [W_1, b_1, ..., W_L, b_L, W_out]``:
    each hidden layer ``addmm + relu_`` (``F.linear``'s numbers in fewer calls), then ``x_L W_out^T (b, 3 v)``."""
    xs = [z]
    for k in range(0, len(params) - 1, 2):
        xs.append(torch.addmm(params[k + 1], xs[-1], params[k].t()).relu_())  # (b, H): one GEMM with its bias on a GPU
    xs.append(torch.mm(xs[-1], params[-1].t()))  # (b, 3 v)
    return xs


class _Mlp(torch.autograd.Function):
    """:func:`_mlp`'s output with its backward pass by hand: per hidden layer the ReLU's mask, ``dW = g^T x``,
    ``db = sum g`` and ``g W`` (about 8 operator calls, against about 16 for autograd's ``addmm`` and ReLU nodes);
    keeps the activations, as autograd does. The same gradients up to float32 rounding (the products' order)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        xs = _mlp(z, list(params))
        ctx.save_for_backward(*xs[:-1], *params)
        return xs[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        saved = ctx.saved_tensors
        n = (len(saved) - 2) // 3  # hidden layers L: L + 1 activations, 2 L + 1 parameters
        xs, params = saved[: n + 1], saved[n + 1 :]
        needs = ctx.needs_input_grad
        grads = [None] * len(params)
        if needs[-1]:
            grads[-1] = torch.mm(grad.t(), xs[-1])  # (3 v, H)
        g = torch.mm(grad, params[-1])  # (b, H)
        for layer in range(n - 1, -1, -1):
            g = torch.ops.aten.threshold_backward(g, xs[layer + 1], 0.0)  # the ReLU's mask (x > 0), as autograd
            if needs[1 + 2 * layer]:
                grads[2 * layer] = torch.mm(g.t(), xs[layer])  # (H, H_in)
            if needs[2 + 2 * layer]:
                grads[2 * layer + 1] = g.sum(0)
            if layer or needs[0]:
                g = torch.mm(g, params[2 * layer])  # (b, H_in)
        return (g if needs[0] else None, *grads)


def sparse_to_barycentric(b_matrix: torch.Tensor, n_max: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse FEM matrix ``B (n_vox, v)`` as dense ``(index, weight)``, both ``(n_vox, n_max)``.

    Each voxel row of ``B`` holds at most four barycentric weights (those of its cell's
    vertices). Rows with fewer are padded with index 0 and weight 0, so that
    ``u[n] = sum_k weight[n, k] * d[index[n, k]]`` equals ``B @ d`` exactly.
    """
    coo = b_matrix.coalesce() if b_matrix.is_sparse else b_matrix.to_sparse().coalesce()
    rows, cols = coo.indices()  # (nnz,), (nnz,)
    vals = coo.values()
    n_vox = b_matrix.shape[0]
    counts = torch.bincount(rows, minlength=n_vox)  # (n_vox,)
    if counts.numel() and int(counts.max()) > n_max:
        raise ValueError(f"barycentric matrix has a row with {int(counts.max())} non-zeros (at most {n_max} allowed)")
    # slot of each non-zero within its row (COO is sorted by row after coalesce)
    starts = torch.cumsum(counts, 0) - counts  # (n_vox,)
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    index = torch.zeros(n_vox, n_max, dtype=torch.long, device=rows.device)
    weight = torch.zeros(n_vox, n_max, dtype=vals.dtype, device=rows.device)
    index[rows, slot] = cols
    weight[rows, slot] = vals
    return index, weight


def fem_matrix(bary_index: torch.Tensor, bary_weight: torch.Tensor, n_vertices: int, dtype=None) -> torch.Tensor:
    """The FEM matrix ``B (n_vox, v)`` (sparse COO) of ``bary_index``/``bary_weight (n_vox, 4)``."""
    n, k = bary_index.shape
    rows = torch.arange(n, device=bary_index.device).repeat_interleave(k)  # (n k,)
    weight = bary_weight.reshape(-1) if dtype is None else bary_weight.reshape(-1).to(dtype)
    return torch.sparse_coo_tensor(torch.stack([rows, bary_index.reshape(-1)]), weight, (n, n_vertices),
                                   check_invariants=False)


class _FemProduct(torch.autograd.Function):
    """``B @ x`` for a sparse ``B (n, v)`` held fixed, its backward ``B^T @ g`` with a ``B^T`` made once: the
    same numbers as ``torch.sparse.mm``'s own backward (which transposes ``B`` anew, about 40 operator
    calls on the CPU against one product)."""

    @staticmethod
    def forward(ctx, fem: torch.Tensor, fem_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.fem_t = fem_t
        return torch.sparse.mm(fem, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.fem_t, grad)


def interpolate_vertex_flow(
    displacements: torch.Tensor, bary_index: torch.Tensor, bary_weight: torch.Tensor, fem: torch.Tensor | None = None,
    fem_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """Voxel flow ``u (b, n_vox, 3)`` from vertex displacements ``d (b, v, 3)`` (linear FEM).

    ``bary_index (n_vox, 4)`` are the vertices of each voxel's cell and ``bary_weight
    (n_vox, 4)`` its barycentric weights: ``u = B d`` with ``B`` never formed densely
    (``fem``: :func:`fem_matrix` of them in the displacements' dtype, if already made; ``fem_t``:
    ``fem.t()``, made once for the gradient).
    """
    b, v, _ = displacements.shape
    n = bary_index.shape[0]
    if fem is None:
        fem = fem_matrix(bary_index, bary_weight, v, displacements.dtype)
    # B (n_vox, v) sparse: sparse mm is 3-4x faster than gathering (b, n_vox, 4, 3) on the CPU
    flat = displacements.permute(1, 0, 2).reshape(v, b * 3)  # (v, b*3)
    if fem_t is None or not (torch.is_grad_enabled() and flat.requires_grad):
        product = torch.sparse.mm(fem, flat)  # (n_vox, b*3)
    else:
        product = _FemProduct.apply(fem, fem_t, flat)
    return product.reshape(n, b, 3).permute(1, 0, 2)  # (b, n_vox, 3)
