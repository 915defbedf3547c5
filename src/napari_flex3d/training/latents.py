"""Per-particle latents: where they start and how each minibatch refines them (docs/model.md).

Auto-decoder inference: every particle's ``z_i (K,)`` is a stored point estimate. For a
minibatch, with the model frozen, :func:`infer_latents_grid` (coordinate descent over a
coarse-to-fine grid, one axis at a time) or :func:`infer_latents_gradient` (a few Adam
steps on ``z``) lowers ``E_data(z) + prior/2 |z|^2`` per particle, or ``E_data(z) - log p(z)``
with a prior learned from the particles (:class:`GridPrior`, grid inference). Both take the model as
a function ``loss_fn(z (b, K)) -> (b,)`` of per-particle data losses, so they know nothing
of projection or CTF.

Initial latents come from :func:`initial_latents`: zero, random, or read from a file
written by another method (a ``.npy``, a cryoDRGN ``z.pkl`` read by a restricted
unpickler that only rebuilds NumPy arrays, cryoSPARC 3DVA components in a ``.cs``, or a
STAR column), standardised to zero mean and unit spread so that they sit in the unit
Gaussian prior.
Imports NumPy and torch only (nothing of the package, nothing of the loop).
"""

from __future__ import annotations

import functools
import io
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "read_latents_pkl",
    "read_latents_file",
    "initial_latents",
    "GridPrior",
    "infer_latents_grid",
    "infer_latents_gradient",
]


# --------------------------------------------------------------------------- reading


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    """The only callables a latent pickle may name: NumPy's array and dtype rebuilders."""
    from numpy._core import multiarray, numeric

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # protocol-2 pickles spell bytes through it
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` resolves NumPy's array rebuilders and refuses all else."""

    _allowed = None

    def find_class(self, module: str, name: str):
        if _ArrayOnlyUnpickler._allowed is None:
            _ArrayOnlyUnpickler._allowed = _numpy_pickle_globals()
        try:
            return _ArrayOnlyUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are read") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids: only NumPy arrays are read")


def read_latents_pkl(path) -> np.ndarray:
    """Read a cryoDRGN ``z.pkl`` (a pickled NumPy array) without executing arbitrary pickle code.

    Returns ``(n, K)`` float32. A pickle naming any global other than NumPy's array and
    dtype rebuilders (``os.system``, ``builtins.eval``, ...) raises ``ValueError``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _ArrayOnlyUnpickler(io.BytesIO(fh.read())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: not a plain pickled NumPy array (cryoDRGN z.pkl): {exc}") from exc
    if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "fiu":
        raise ValueError(f"{path}: holds {type(obj).__name__}, not a numeric NumPy array")
    return _as_2d(obj, path)


def _as_2d(arr: np.ndarray, source) -> np.ndarray:
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{source}: latents must be (n,) or (n, K), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{source}: latents contain NaN or infinite values")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _columns_with_prefix(names, prefix: str) -> list[str]:
    """Columns ``prefix1, prefix2, ...`` (or ``prefix0/...``), in numeric order."""
    import re

    pattern = re.compile(re.escape(prefix) + r"(\d+)(/value)?$")
    found = [(int(m.group(1)), n) for n in names if (m := pattern.match(n))]
    return [n for _, n in sorted(found)]


def read_latents_file(path, column: str | None = None, table=None) -> np.ndarray:
    """Latents ``(n, K)`` float32 from a ``.npy``, cryoDRGN ``.pkl``, cryoSPARC ``.cs`` or STAR file.

    ``column`` is the prefix of numbered columns: ``rlnFlex3dLatent`` (STAR, the default
    there) or ``components_mode_`` (cryoSPARC 3DVA ``components_mode_0/value``..., the
    default for ``.cs``). When ``table`` (the particles' DataFrame) is given and both hold
    a ``uid``, ``.cs`` rows are matched to it by ``uid``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: latent file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a plain .npy array ({exc})") from exc
        return _as_2d(arr, path)
    if suffix in (".pkl", ".pickle"):
        return read_latents_pkl(path)
    if suffix == ".cs":
        rec = np.load(path, allow_pickle=False)
        names = rec.dtype.names or ()
        cols = _columns_with_prefix(names, column or "components_mode_")
        if not cols:
            raise ValueError(f"{path}: no '{column or 'components_mode_'}N/value' fields (3DVA components)")
        arr = np.stack([rec[c].astype(np.float64) for c in cols], axis=1)
        if table is not None and "uid" in names and "uid" in getattr(table, "columns", ()):
            order = {int(u): i for i, u in enumerate(rec["uid"])}
            try:
                arr = arr[[order[int(u)] for u in table["uid"]]]
            except KeyError as exc:
                raise ValueError(f"{path}: particle uid {exc} has no 3DVA components") from None
        return _as_2d(arr, path)
    if suffix == ".star":
        import starfile

        data = starfile.read(path, always_dict=True)
        for block in data.values():
            if hasattr(block, "columns"):
                cols = _columns_with_prefix(block.columns, column or "rlnFlex3dLatent")
                if cols:
                    return _as_2d(block[cols].to_numpy(np.float64), path)
        raise ValueError(f"{path}: no '{column or 'rlnFlex3dLatent'}N' columns")
    raise ValueError(f"{path}: latent file must be .npy, .pkl, .cs or .star")


def _standardise(z: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation per axis (axes with no spread stay zero)."""
    z = z - z.mean(axis=0, keepdims=True)
    std = z.std(axis=0, keepdims=True)
    return (z / np.where(std > 0, std, 1.0)).astype(np.float32)


def initial_latents(
    how: str, n: int, latent_dim: int, seed: int = 0, column: str | None = None, table=None
) -> np.ndarray:
    """Initial latents ``(n, K)`` float32.

    ``how``: ``"zero"``; ``"random"`` (unit normal, from ``seed``); ``"column"`` (numbered
    ``column`` prefix in ``table``, the input particles' rows, default ``rlnFlex3dLatent``);
    or a file path for :func:`read_latents_file`. Read latents are standardised and cut
    or zero-padded to ``K`` axes; their row count must equal ``n``.
    """
    if how == "zero":
        return np.zeros((n, latent_dim), np.float32)
    if how == "random":
        return np.random.default_rng(seed).standard_normal((n, latent_dim)).astype(np.float32)
    if how == "column":
        if table is None:
            raise ValueError("latent_init='column' needs the particles' table")
        cols = _columns_with_prefix(table.columns, column or "rlnFlex3dLatent")
        if not cols:
            raise ValueError(f"particles have no '{column or 'rlnFlex3dLatent'}N' columns for the initial latents")
        z = _as_2d(table[cols].to_numpy(np.float64), "particle table")
    else:
        z = read_latents_file(how, column=column, table=table)
    if len(z) != n:
        raise ValueError(f"{how}: {len(z)} latent rows for {n} particles")
    z = _standardise(z[:, :latent_dim])
    if z.shape[1] < latent_dim:
        z = np.concatenate([z, np.zeros((n, latent_dim - z.shape[1]), np.float32)], axis=1)
    return z


# --------------------------------------------------------------------------- the prior


def _joint_grid(k_dim: int, offsets: torch.Tensor) -> torch.Tensor:
    """All ``len(offsets)**K`` points ``(G, K)`` of the joint grid, first axis slowest: the order
    of the first sweep's candidates and of a :class:`GridPrior`'s values."""
    return torch.cartesian_prod(*([offsets] * k_dim)).reshape(-1, k_dim)


@functools.lru_cache(maxsize=16)
def _corners(k_dim: int, n_grid: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(bits (2**K, K) long, place (K,) long, upper (2**K, K) bool)``: the corners of a grid cell as 0/1
    offsets per axis (first axis slowest, as :func:`_joint_grid`), each axis's stride in the flat grid,
    and the bits as a mask. Read only."""
    bits = torch.tensor([[(c >> (k_dim - 1 - k)) & 1 for k in range(k_dim)] for c in range(2**k_dim)], device=device)
    place = torch.tensor([n_grid ** (k_dim - 1 - k) for k in range(k_dim)], device=device)
    return bits, place, bits.bool()


@functools.lru_cache(maxsize=32)
def _scalars(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``values`` as 0-dim tensors: an operator with a Python number records 5 operator calls (the
    number wrapped and copied), with a 0-dim tensor of the operand's dtype 1; the same numbers. Read only."""
    return tuple(torch.tensor(v, device=device, dtype=dtype) for v in values)


def _logsumexp(x: np.ndarray) -> float:
    """``log(sum(exp(x)))`` of a vector, without overflow."""
    top = float(x.max())
    return top + math.log(float(np.exp(x - top).sum())) if math.isfinite(top) else top


class GridPrior:
    """A latent prior learned from the data: a log density on the joint grid of inference.

    3DFlex's prior is the unit Gaussian, whatever the motion's distribution. Posterior means
    under a prior that is wrong pull particles towards where that prior puts its mass (a
    uniform or two-state motion is made Gaussian-shaped). This prior is estimated from the
    particles instead (empirical Bayes): its values at the ``n_grid**K`` points of the joint
    first sweep are the particles' posterior weights on them, averaged (one EM step of the
    grid's nonparametric maximum likelihood estimate per epoch: :meth:`updated`), mixed with
    a little of the Gaussian it starts from so that no point is ever ruled out, and tilted
    back to that Gaussian's mean and variance on every axis (which anchor the latents' scale).
    Between grid points its log density is interpolated multilinearly; beyond the grid it
    falls off as the Gaussian does.

    ``log_density (n_grid**K,)`` is in ``torch.cartesian_prod`` order (first axis slowest),
    up to a constant.
    """

    #: the share of the starting Gaussian mixed into every update
    floor = 0.01

    def __init__(self, log_density: torch.Tensor, k_dim: int, n_grid: int, z_range: float, gaussian_weight: float = 1.0):
        if n_grid < 2 or log_density.shape != (n_grid**k_dim,):
            raise ValueError(f"grid prior needs {n_grid}**{k_dim} values on a grid of >= 2 points, got {tuple(log_density.shape)}")
        self.log_density = log_density
        self.k_dim, self.n_grid, self.z_range, self.gaussian_weight = int(k_dim), int(n_grid), float(z_range), float(gaussian_weight)

    @classmethod
    def gaussian(cls, k_dim: int, n_grid: int, z_range: float, weight: float = 1.0, device=None) -> "GridPrior":
        """The unit Gaussian (``exp(-weight/2 |z|^2)``) on the grid: where an empirical prior starts."""
        points = cls._points(k_dim, n_grid, z_range, device)
        return cls(-0.5 * weight * (points**2).sum(-1), k_dim, n_grid, z_range, weight)

    @staticmethod
    def _points(k_dim: int, n_grid: int, z_range: float, device=None) -> torch.Tensor:
        return _joint_grid(k_dim, torch.linspace(-z_range, z_range, n_grid, device=device))

    def _gaussian_weights(self) -> torch.Tensor:
        """The starting Gaussian's probabilities on the grid, ``(G,)`` float64 on the CPU."""
        points = self._points(self.k_dim, self.n_grid, self.z_range).to(torch.float64)
        return torch.softmax(-0.5 * self.gaussian_weight * (points**2).sum(-1), 0)

    def matches(self, k_dim: int, n_grid: int, z_range: float) -> bool:
        return (self.k_dim, self.n_grid) == (k_dim, n_grid) and math.isclose(self.z_range, z_range)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """``-log p(z)`` up to a constant, ``(..., K) -> (...)``."""
        g, r = self.n_grid, self.z_range
        r_t, h_t, one, half_w = _scalars((r, 2.0 * r / (g - 1), 1.0, 0.5 * self.gaussian_weight), z.device, z.dtype)
        inside = z.clamp(-r, r)
        t = (inside + r_t) / h_t  # (..., K) grid coordinates
        i0 = t.floor().clamp_(0, g - 2)
        frac = t.sub_(i0).unsqueeze(-2)  # (..., 1, K)
        bits, place, upper = _corners(self.k_dim, g, z.device)  # (2**K, K) 0/1, (K,) strides, (2**K, K) bool
        # the 2**K corners of each point's grid cell at once: flat index and multilinear weight
        index = (i0.long().unsqueeze(-2) + bits).mul_(place).sum(-1)  # (..., 2**K)
        weight = torch.where(upper, frac, one - frac).prod(-1)  # (..., 2**K)
        inner = (weight * self.log_density.to(z)[index]).sum(-1)
        tail = (z * z).sum(-1).sub_((inside * inside).sum(-1)).mul_(half_w)
        return tail.sub_(inner)

    def updated(self, mass: torch.Tensor) -> "GridPrior":
        """One EM step: the new prior is ``mass`` (the summed posterior weights of the grid's
        points, ``(n_grid**K,)``), normalised and mixed with :attr:`floor` of the starting
        Gaussian; the prior itself when ``mass`` is all zero (no particle was inferred)."""
        mass = mass.to(self.log_density)
        gauss = self._gaussian_weights().to(mass)
        total = mass.sum()
        empirical = mass / total.clamp(min=torch.finfo(mass.dtype).tiny)
        new = self._standardised(torch.log((1.0 - self.floor) * empirical + self.floor * gauss))
        return GridPrior(torch.where(total > 0, new, self.log_density), self.k_dim, self.n_grid, self.z_range, self.gaussian_weight)

    def _standardised(self, log_p: torch.Tensor, iterations: int = 100) -> torch.Tensor:
        """``log_p`` tilted to the starting Gaussian's mean and variance on every axis.

        Of all priors with those moments, the one closest to ``log_p`` (least Kullback-Leibler
        divergence) is ``log_p + sum_k a_k z_k + b_k z_k^2`` up to a constant; ``a, b``
        minimise the convex dual ``logsumexp(log_p + F theta) - theta . target`` (Newton's
        method with backtracking, on the host in float64: ``2K`` numbers once an epoch). The
        moments anchor the latents' scale and centre as the Gaussian does (an auto-decoder's
        latents are otherwise free to drift in scale, the flow generator following them); the
        shape is the data's. With 2 points per axis the variance is fixed by the grid, and
        only the mean is matched.
        """
        # NumPy: a few dozen tiny host operations a step of Newton, no device and no torch operator calls
        points = self._points(self.k_dim, self.n_grid, self.z_range).to(torch.float64).numpy()  # (G, K)
        feats = np.concatenate([points, points**2], 1)  # (G, 2K)
        target = self._gaussian_weights().numpy() @ feats  # (2K,) the starting Gaussian's moments
        base = log_p.detach().to("cpu", torch.float64).numpy()
        theta = np.zeros(2 * self.k_dim)
        ridge = 1e-9 * np.eye(2 * self.k_dim)

        def dual(th):
            return _logsumexp(base + feats @ th) - th @ target

        value = dual(theta)
        for _ in range(iterations):
            logits = base + feats @ theta
            p = np.exp(logits - _logsumexp(logits))  # (G,) softmax
            grad = p @ feats - target  # (2K,)
            if np.abs(grad).max() < 1e-10:
                break
            centred = feats - p @ feats
            step = np.linalg.solve(centred.T @ (p[:, None] * centred) + ridge, grad)
            t = min(1.0, 1.0 / float(np.abs(step).max()))  # no jump into a flat, saturated corner
            if t * float(grad @ step) < 1e-14:  # a decrease the dual's rounding hides: the minimum, to 1e-14
                theta = theta - t * step
                break
            while t > 1e-12:  # backtracking (Armijo): full Newton steps overshoot on peaked priors
                trial = dual(theta - t * step)
                if trial <= value - 1e-4 * t * float(grad @ step):
                    break
                t *= 0.5
            else:
                break
            theta, value = theta - t * step, trial
        logits = base + feats @ theta
        return torch.from_numpy(logits - _logsumexp(logits)).to(log_p)


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def infer_latents_grid(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    sweeps: int = 2,
    n_grid: int = 9,
    z_range: float = 2.5,
    prior_weight: float = 1.0,
    max_joint: int = 100,
    estimate: str = "map",
    prior: GridPrior | None = None,
    grid_mass: torch.Tensor | None = None,
    stacked: bool = False,
    window: int | None = None,
) -> torch.Tensor:
    """Grid search over ``z``: a joint grid over all axes first when small enough, then
    refinements on grids that narrow every sweep.

    Sweep 0 tries ``n_grid`` values spread over ``[-z_range, z_range]`` on each axis (and
    the current value): jointly, all ``n_grid**K`` combinations, when that is at most
    ``max_joint`` (``K = 1``, or ``K = 2`` with ``n_grid <= 10``), else one axis at a time.
    After a joint sweep at ``K >= 2``, each later sweep tries, all axes at once, a local grid
    around the current best: the centres of the sub-cells of its cell in the grid before
    (``+-`` half a spacing), :data:`LOCAL_SUBDIVISION` per axis (16 at ``K = 2``), in one block
    (one model call) instead of one per axis; the next sweep's cell is one sub-cell. Otherwise (``K = 1``,
    or no joint sweep) each later sweep tries ``n_grid`` values per axis around the current
    best within one grid spacing of the previous sweep, one axis at a time (coordinate
    descent). The objective per particle is
    ``loss_fn(z) + prior_weight/2 |z|^2``, or ``loss_fn(z) + prior.energy(z)`` with a
    learned :class:`GridPrior`.

    ``estimate="mean"`` returns the posterior mean instead of the minimum (the MAP point)
    where the joint first sweep ran: the quadrature of ``exp(-objective)`` over the joint
    grid's points plus the refined minimum, which adds the mass the grid missed
    (``exp(-best) - exp(-grid's best)``). Why the joint sweep and the mean (coupled latents,
    broad posteriors): docs/model.md, "Inference: the latents"; what they gain on the
    recovery benchmark: benchmarks/RESULTS.md.

    Args:
        loss_fn: ``z (b, K) -> (b,)`` data loss per particle, model frozen.
        z0: ``(b, K)`` starting latents.
        estimate: ``"map"`` (the minimum found) or ``"mean"`` (posterior mean; the
            minimum when no joint sweep ran, ``K`` too large).
        prior: a learned prior on this grid (same ``K``, ``n_grid``, ``z_range``) in place
            of the Gaussian.
        grid_mass: ``(n_grid**K,)``, if given: each particle's posterior weights on the joint
            grid's points (normalised per particle) are added to it, for
            :meth:`GridPrior.updated` (nothing is added when no joint sweep runs).
        stacked: ``loss_fn`` also takes ``(g, b, K)``, ``g`` candidates per particle, and
            returns ``(g, b)``: a sweep's candidates (the joint grid, with ``z0``, or one axis's
            values) are then evaluated in one call instead of one call each (a GPU's kernel
            launches, a CPU's operator overhead), with the same result.
        window: a warm start: the joint sweep tries, per particle, only the ``window**K`` points of
            the joint grid nearest ``z0`` (a block of ``window`` values per axis around ``z0``'s
            nearest grid value, moved inside the grid at its edges) instead of all ``n_grid**K``;
            the posterior mean and ``grid_mass`` count the block's points alone (the points
            outside get no weight). For particles whose ``z0`` is already near their posterior
            (an earlier epoch's inference); ``None`` or ``>= n_grid``: the whole grid.
    Returns:
        ``(b, K)`` refined latents (``"map"``: never worse than ``z0`` by the objective).
    """
    if estimate not in ("map", "mean"):
        raise ValueError(f"estimate must be 'map' or 'mean', got {estimate!r}")
    k_dim = z0.shape[1]
    if prior is not None and not prior.matches(k_dim, n_grid, z_range):
        raise ValueError(
            f"the grid prior is on a {prior.n_grid}**{prior.k_dim} grid over +-{prior.z_range}; "
            f"inference uses {n_grid}**{k_dim} over +-{z_range}"
        )

    def objective(cand: torch.Tensor) -> torch.Tensor:  # (g, b, K) -> (g, b): data loss + prior energy
        data = loss_fn(cand) if stacked else torch.stack([loss_fn(c) for c in cand])
        return data + (0.5 * prior_weight * (cand**2).sum(-1) if prior is None else prior.energy(cand))

    joint = sweeps > 0 and n_grid**k_dim <= max_joint
    grid, joint_points = _first_sweep(k_dim, n_grid, float(z_range), z0.device, z0.dtype)  # (g,), (g**K, K)
    points = flat = None
    if joint and window is not None and window < n_grid:
        points, flat = _window_points(z0, grid, int(window))  # (W, b, K), (W, b)
    elif joint:
        points = joint_points[:, None, :].expand(-1, z0.shape[0], k_dim)  # (G, b, K)
    search = _GridSearch(objective, z0.clone(), points, grid_mass is not None)
    half_width = float(z_range)
    for sweep in range(sweeps):
        if joint and k_dim > 1 and sweep > 0:  # one block: the local grid around the best, all axes at once
            # half_width is now the spacing of the grid before
            search.keep_best(_local_offsets(k_dim, half_width, z0.device, z0.dtype))
            half_width = half_width / LOCAL_SUBDIVISION  # the next sweep's cell: one sub-cell
            continue
        if sweep > 0 or not joint:
            offsets = torch.linspace(-half_width, half_width, n_grid, device=z0.device, dtype=z0.dtype)  # (g,)
            search.axis_sweep(offsets, from_origin=sweep == 0)
        half_width = 2.0 * half_width / max(n_grid - 1, 1)  # one previous grid spacing
    if grid_mass is not None and search.grid_objs is not None:
        weights = torch.softmax(-search.grid_objs.T, 1)  # (b, G | W) each particle's posterior on the points tried
        if flat is None:
            grid_mass += weights.sum(0).to(grid_mass)  # (g^K,)
        else:
            grid_mass.index_add_(0, flat.T.reshape(-1), weights.reshape(-1).to(grid_mass))
    if estimate == "mean" and joint:
        return search.posterior_mean()
    return search.z


@functools.lru_cache(maxsize=16)
def _first_sweep(k_dim: int, n_grid: int, z_range: float, device: torch.device, dtype: torch.dtype):
    """``(grid (g,), joint (g**K, K))``: the first sweep's values per axis and the joint grid's points,
    made once (every minibatch asks). Read only."""
    grid = torch.linspace(-z_range, z_range, n_grid, device=device, dtype=dtype)
    return grid, _joint_grid(k_dim, grid)


#: A refinement sweep after a joint first sweep (``K >= 2``) divides the best point's cell of the grid
#: before into this many sub-cells per axis and tries their centres.
LOCAL_SUBDIVISION = 4


@functools.lru_cache(maxsize=32)
def _local_offsets(k_dim: int, spacing: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(s**K, K)``: the offsets a refinement sweep adds to the best latents, ``s = LOCAL_SUBDIVISION``: the
    centres of the ``s**K`` sub-cells of the cell ``+-spacing / 2`` around it (the best point's cell of
    a grid of ``spacing``), ``(2 i + 1 - s) / (2 s) * spacing`` per axis, first axis slowest. Read only."""
    s = LOCAL_SUBDIVISION
    centres = (2 * torch.arange(s, dtype=torch.float64) + 1 - s) / (2 * s)  # (s,) in units of the spacing
    return (_joint_grid(k_dim, centres) * spacing).to(device, dtype)


def _window_points(z0: torch.Tensor, grid: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points (W, b, K), flat (W, b) long)``: per particle the ``W = window**K`` joint-grid points of the
    block of ``window`` values per axis around ``z0 (b, K)``'s nearest value of ``grid (g,)`` (moved inside the
    grid at its edges), first axis slowest as :func:`_joint_grid`, and their indices in the flat joint grid."""
    n_grid, k_dim = grid.shape[0], z0.shape[1]
    step = (grid[-1] - grid[0]) / (n_grid - 1)
    nearest = ((z0 - grid[0]) / step).round_().clamp_(0, n_grid - 1).long()  # (b, K)
    low = (nearest - window // 2).clamp_(0, n_grid - window)  # (b, K) the block's first index per axis
    offsets = _joint_grid(k_dim, torch.arange(window, device=z0.device))  # (W, K)
    index = low[None] + offsets[:, None, :]  # (W, b, K) per-axis indices
    _, place, _ = _corners(k_dim, n_grid, z0.device)  # (K,) each axis's stride in the flat grid
    return grid[index], (index * place).sum(-1)


class _GridSearch:
    """The state of :func:`infer_latents_grid` for a minibatch: each particle's best latents and
    objective so far, and the posterior quadrature over the joint grid's points (a log-sum-exp,
    so that no particle's weights under- or overflow).

    Candidates come in blocks ``(g, b, K)`` evaluated at once; a block's outcome is that of
    trying its candidates one after the other (a candidate replaces the best only if strictly
    lower, so among equal objectives the first wins, as ``min`` picks it).
    """

    def __init__(self, objective: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, joint_points, keep_grid: bool):
        """``joint_points (G, b, K)`` (or ``None``): the joint sweep's points per particle, evaluated with ``z`` in one block."""
        self.objective = objective  # (g, b, K) -> (g, b)
        self.z = z  # (b, K)
        self.log_mass = self.moment = self.grid_best = None  # the joint grid's quadrature and lowest objective
        self.grid_objs = None  # (G, b) the joint grid's objectives, for grid_mass
        if joint_points is None:
            self.best = objective(z[None])[0]  # (b,)
            return
        cand = torch.cat([z[None], joint_points])  # (1 + G, b, K)
        obj = objective(cand)  # (1 + G, b)
        self.best = obj[0]
        cand, obj = cand[1:], obj[1:]
        self.log_mass = torch.logsumexp(-obj, 0)  # (b,) log sum exp(-obj)
        self.moment = (torch.exp(-obj - self.log_mass)[..., None] * cand).sum(0)  # (b, K) sum exp(-obj - log_mass) * z
        self.grid_best = obj.min(0).values  # (b,)
        if keep_grid:
            self.grid_objs = obj
        self.keep(cand, obj)

    def keep(self, cand: torch.Tensor, obj: torch.Tensor) -> None:
        """Keeps the best of ``cand (g, b, K)`` for the particles it improves (``torch.where``: no host sync)."""
        low, first = torch.nan_to_num(obj, nan=math.inf).min(0)  # (b,): the first of equal minima
        better = low < self.best
        picked = cand.gather(0, first[None, :, None].expand(1, -1, cand.shape[-1]))[0]  # (b, K)
        self.z = torch.where(better[:, None], picked, self.z)
        self.best = torch.where(better, low, self.best)

    def keep_best(self, offsets: torch.Tensor) -> None:
        """Tries ``best + offsets (P, K)`` for every particle in one block, all axes at once."""
        cand = self.z[None] + offsets[:, None, :]  # (P, b, K)
        self.keep(cand, self.objective(cand))

    def axis_sweep(self, offsets: torch.Tensor, from_origin: bool) -> None:
        """Coordinate descent: ``offsets (g,)`` about 0 (``from_origin``) or about the current best, one
        axis at a time; an axis's candidates differ from the best only on that axis, so they are one block."""
        for k in range(self.z.shape[1]):
            centre = torch.zeros_like(self.z[:, k]) if from_origin else self.z[:, k]  # (b,)
            cand = self.z.expand(len(offsets), -1, -1).contiguous()  # (g, b, K) (a copy: 6 operator calls, repeat 33)
            cand[:, :, k] = centre[None, :] + offsets[:, None]
            self.keep(cand, self.objective(cand))

    def posterior_mean(self) -> torch.Tensor:
        """``(b, K)``: the joint grid's quadrature plus the refined minimum, weighted by the mass the grid missed."""
        # the refined minimum adds exp(-best) - exp(-grid_best): nothing when the grid already
        # sat at the minimum, nearly all when the posterior is narrow
        excess = -self.best + torch.log1p(-torch.exp((self.best - self.grid_best).clamp(max=0.0)).clamp(max=1.0 - 1e-7))
        new_mass = torch.logaddexp(self.log_mass, excess)  # (b,)
        return self.moment * torch.exp(self.log_mass - new_mass)[:, None] + torch.exp(excess - new_mass)[:, None] * self.z


def infer_latents_gradient(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    steps: int = 5,
    lr: float = 0.1,
    prior_weight: float = 1.0,
) -> torch.Tensor:
    """A few Adam steps on ``z`` with the model frozen; returns the best ``z`` seen per particle.

    Args:
        loss_fn: ``z (b, K) -> (b,)`` data loss per particle, differentiable in ``z``.
        z0: ``(b, K)`` starting latents.
    Returns:
        ``(b, K)`` refined latents (detached).
    """
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    best_z = z0.detach().clone()
    best = None
    for _ in range(steps + 1):
        obj = loss_fn(z) + 0.5 * prior_weight * (z**2).sum(-1)  # (b,)
        with torch.no_grad():
            if best is None:
                best = obj.detach().clone()
            else:
                better = obj < best
                best_z = torch.where(better[:, None], z.detach(), best_z)
                best = torch.where(better, obj.detach(), best)
        if _ == steps:
            break
        (z.grad,) = torch.autograd.grad(obj.sum(), [z])  # only z: the model's parameters get no gradient
        opt.step()
    return best_z
