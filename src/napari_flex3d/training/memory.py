"""Device memory of a training run: an estimate of a step's peak, checked against free GPU memory.

:func:`estimate_step_memory` adds up what a training step holds at its peak, for the chosen
box, batch, micro-batch, ``K``, model size and latent-inference settings:

- *resident*: the model's parameters and buffers (and the latent view's), the latents table,
  the consensus map: on the device once the run is built;
- *optimiser*: the gradients and Adam's two moments of every parameter;
- *batch*: the minibatch's images and CTFs, twice (the prefetcher reads the next one ahead);
- *working*: the larger of the model update's and latent inference's transient tensors for
  one micro-batch. Both grow with the particles of a piece times the pixels of the box, the
  canonical map's voxels and (the update) the mesh's cells; the splat's temporaries grow
  with the particles of one of its chunks (``ops.splat``), and a stacked grid inference
  evaluates up to ``1 + latent_grid**K`` candidates per particle at once, as many as
  ``training.step``'s stacking bound allows.

The coefficients were fitted to the peak tensor bytes that ``torch.profiler`` records on the
CPU (``profile_memory=True``) for 19 models and batches (boxes 32-64, 390-26,581 voxels,
242-9,470 cells, 4-96 particles; ``benchmarks/gpu_memory.py --measure``): the estimate is
0.92x-1.31x of those measurements (``tests/training/test_gpu_memory.py`` checks 0.75x-1.5x at
two boxes and two batches). On a GPU the same tensors are allocated, plus the CUDA caching
allocator's rounding and cuFFT's work areas: :func:`check_device_memory` asks for
:data:`HEADROOM` more than the estimate. Against the one GPU measurement at hand
(``benchmarks/RESULTS.md`` gs4: box 128, batch 256, 2.70 GB) the estimate is 2.99 GB.

:func:`check_device_memory` runs before the first step on CUDA: a step that cannot fit in the
free memory (``torch.cuda.mem_get_info``, plus what this process's allocator holds unused)
is refused with the numbers and the largest batch (and micro-batch) that fits. On the CPU
nothing is checked: the operating system pages memory out rather than refusing it, and
``torch.OutOfMemoryError`` is a CUDA error (the estimate is still shown when the run starts).
Imports config and training's :mod:`.micro_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..ops.splat import temporary_bytes
from .micro_batch import DeviceMemoryError

__all__ = [
    "HEADROOM", "ModelSize", "MemoryEstimate", "estimate_step_memory", "estimate_for_run", "largest_batch",
    "free_device_bytes", "check_device_memory",
]

F32 = 4  # bytes per float32

#: Bytes of the model update's working tensors per particle of a micro-batch: per pixel of the
#: training box (the image, its spectra, the loss and their gradients) and per canonical voxel
#: (the moved voxels the splat keeps for its backward pass).
_UPDATE_PER_PIXEL, _UPDATE_PER_VOXEL = 64.0, 12.0
#: The splat's backward pass: the moved voxels' gradient per particle, and per point of one of
#: its chunks the recomputed kernel weights, their derivatives and the tap sums.
_SPLAT_GRAD_PER_VOXEL, _SPLAT_BACKWARD_PER_POINT = 12.0, 128.0
#: The rigidity energy: the float64 edge matrices kept per particle and cell, and the
#: transients of one of its pieces per particle and cell (``mesh.rigidity``).
_RIGIDITY_KEPT_PER_CELL, _RIGIDITY_PIECE_PER_CELL = 72.0, 560.0
_RIGIDITY_PIECE_BYTES = 1 << 27  # the largest (particles x cells x 3 x 3) float64 tensor of one piece
#: A stacked grid inference (no graph) per candidate row: per pixel (the tiled minibatch, the
#: model image and the loss) and per voxel (the moved voxels); the splat's own temporaries are
#: counted by ``ops.splat.temporary_bytes``.
_INFER_PER_PIXEL, _INFER_PER_VOXEL = 15.5, 13.0

#: The splat's chunk bound (particles x points), per device type (``ops.splat``'s), and the
#: stacked latent inference's bound (candidate rows x elements per row: the moved points and about
#: 12 image-sized temporaries, float32; 1 GiB on every device), which ``training.step`` uses. At
#: box 32 a minibatch's inference is then 3 model calls instead of 6 (256 MiB); on the CPU that once
#: made a run 1.4x slower, until freed memory was kept in the heap (benchmarks/RESULTS.md, op4, op5).
_SPLAT_CHUNK = {"cpu": 1 << 21, "cuda": 1 << 22}
STACK_ELEMENTS = 1 << 28

#: A GPU needs this much more than the estimate: the caching allocator's rounding and
#: fragmentation, cuFFT's plans and work areas.
HEADROOM = 1.25


@dataclass(frozen=True)
class ModelSize:
    """What sets a model's memory: box, canonical voxels, mesh vertices and cells, parameters and bytes."""

    box: int
    n_voxels: int
    n_vertices: int
    n_cells: int
    n_parameters: int  # trained: the flow generator's weights and the canonical values
    model_bytes: int  # parameters and buffers (mesh, barycentric tables)

    @classmethod
    def of(cls, model) -> "ModelSize":
        """The size of a built :class:`~napari_flex3d.model.flex.FlexModel`."""
        tensors = list(model.parameters()) + list(model.buffers())
        return cls(
            box=int(model.box), n_voxels=int(model.canonical.n_voxels), n_vertices=int(model.vertices_a.shape[0]),
            n_cells=int(model.cells.shape[0]), n_parameters=sum(p.numel() for p in model.parameters()),
            model_bytes=sum(t.numel() * t.element_size() for t in tensors),
        )

    @classmethod
    def typical(cls, box: int, config: TrainConfig, mask_fraction: float = 0.15) -> "ModelSize":
        """A model before it is built: a solvent mask over ``mask_fraction`` of the box, meshed as training
        does by default (20 cells across the box, cells of at least 4 voxels). Per cube of the cell size
        inside the mask the mesh builder made 35 tetrahedra and 7.4 vertices (the two-domain molecule of
        ``benchmarks/gpu_scale.py`` at box 128: 12 % of the box, 33,569 cells, 7,073 vertices)."""
        n_vox = int(mask_fraction * box**3)
        cubes = mask_fraction * min(20.0, box / 4.0) ** 3
        n_vertices, n_cells = int(7.4 * cubes), int(35 * cubes)
        flow = config.latent_dim * config.hidden + config.hidden + (config.layers - 1) * (config.hidden + 1) * config.hidden
        flow += config.hidden * 3 * n_vertices
        buffers = n_vox * (4 * 8 + 4 * 4 + 8) + n_cells * (4 * 8 + 9 * 4 + 4) + n_vertices * 16
        return cls(box, n_vox, n_vertices, n_cells, flow + n_vox, F32 * (flow + n_vox) + buffers)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of a training step at its peak (see the module's notes)."""

    resident: int  # model, latent view, latents table, consensus map, spectra
    optimiser: int  # gradients and Adam's moments
    batch: int  # the minibatch and the one read ahead
    update: int  # the model update of one micro-batch
    inference: int  # latent inference of one micro-batch
    micro_batch: int  # the micro-batch these assume

    @property
    def step(self) -> int:
        """What a step adds to the resident memory at its peak."""
        return self.optimiser + self.batch + max(self.update, self.inference)

    @property
    def total(self) -> int:
        return self.resident + self.step


def _splat_chunk(n_voxels: int, device_type: str) -> int:
    """Particles whose splat temporaries are alive at once: the splat handles ``ops.splat``'s chunk of them at a
    time, and a chunk's temporaries are released only as the next chunk's replace them (two chunks at the peak)."""
    return 2 * max(1, _SPLAT_CHUNK.get(device_type, _SPLAT_CHUNK["cuda"]) // max(n_voxels, 1))


def _update_bytes(m: int, size: ModelSize, device_type: str) -> float:
    """The model update of ``m`` particles at its peak: during the rigidity energy or the splat's backward pass."""
    kept = m * (_UPDATE_PER_PIXEL * size.box**2 + _UPDATE_PER_VOXEL * size.n_voxels)
    piece = max(1, _RIGIDITY_PIECE_BYTES // (72 * max(size.n_cells, 1)))
    rigidity = size.n_cells * (m * _RIGIDITY_KEPT_PER_CELL + min(m, piece) * _RIGIDITY_PIECE_PER_CELL)
    splat = size.n_voxels * (m * _SPLAT_GRAD_PER_VOXEL + min(m, _splat_chunk(size.n_voxels, device_type)) * _SPLAT_BACKWARD_PER_POINT)
    return kept + max(rigidity, splat)


def _grid_inference_bytes(m: int, size: ModelSize, config: TrainConfig, device_type: str) -> float:
    """A stacked grid inference: ``g`` candidates per particle, as many at once as the stacking bound allows."""
    joint = config.latent_steps > 0 and config.latent_grid**config.latent_dim <= 100
    g = 1 + config.latent_grid**config.latent_dim if joint else config.latent_grid
    per_row = 3 * size.n_voxels + 12 * size.box**2  # training.step's own count of a row's elements
    rows_max = STACK_ELEMENTS // per_row
    rows = max(1, min(g, rows_max // max(m, 1))) * m
    kept = rows * (_INFER_PER_PIXEL * size.box**2 + _INFER_PER_VOXEL * size.n_voxels)
    return kept + temporary_bytes(rows, size.n_voxels, size.box, config.kernel, device_type)


def estimate_step_memory(
    config: TrainConfig, size: ModelSize, n_particles: int, device_type: str = "cuda", view: ModelSize | None = None,
    batch: int | None = None, micro_batch: int | None = None,
) -> MemoryEstimate:
    """Estimated peak bytes of a training step.

    Args:
        config: the run's settings (batch, micro-batch, ``K``, latent inference).
        size: the model at the training box (:meth:`ModelSize.of` or :meth:`ModelSize.typical`).
        n_particles: rows of the latents table.
        device_type: ``"cuda"`` or ``"cpu"`` (the splat's and stacking's bounds differ).
        view: the model at ``latent_box`` if inference runs there.
        batch, micro_batch: in place of the config's.
    """
    batch = config.batch if batch is None else int(batch)
    micro = config.micro_batch if micro_batch is None else micro_batch
    m = max(1, batch if micro is None else min(int(micro), batch))
    box = size.box
    image = F32 * (box**2 + box * (box // 2 + 1)) + 64  # image, CTF, pose, shift, group, index
    view_bytes = 0 if view is None else view.model_bytes
    if view is not None:
        image += F32 * (view.box**2 + view.box * (view.box // 2 + 1))  # the cropped copies inference works on
    resident = size.model_bytes + view_bytes + F32 * (n_particles * config.latent_dim + box**3) + 2 * F32 * box**2
    inference_size = size if view is None else view
    if config.latent_inference == "none":
        inference = 0.0
    elif config.latent_inference == "grid":
        inference = _grid_inference_bytes(m, inference_size, config, device_type)
    else:  # gradient steps: a forward graph and its backward, as the update's
        inference = _update_bytes(m, inference_size, device_type)
    return MemoryEstimate(
        resident=int(resident), optimiser=3 * F32 * size.n_parameters, batch=2 * batch * image,
        update=int(_update_bytes(m, size, device_type)), inference=int(inference), micro_batch=m,
    )


def estimate_for_run(run, batch: int | None = None, micro_batch: int | None = None) -> MemoryEstimate:
    """:func:`estimate_step_memory` of a built run (its model, latent view and particles)."""
    view = None if run.latent_view is None else ModelSize.of(run.latent_view.model)
    return estimate_step_memory(
        run.config, ModelSize.of(run.model), len(run.latents), run.device.type, view, batch=batch, micro_batch=micro_batch
    )


def largest_batch(fits, high: int) -> int:
    """The largest ``b`` in ``[1, high]`` with ``fits(b)`` (``fits`` grows false with ``b``); 0 if none."""
    if high < 1 or not fits(1):
        return 0
    low = 1
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes a run on ``device`` may still allocate: CUDA's free memory plus what this process's caching
    allocator holds unused; ``None`` on the CPU (not checked). Tests replace it to stand for a GPU."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def check_device_memory(run, free: int | None = None) -> MemoryEstimate:
    """Refuse a step that cannot fit the device's free memory (:class:`DeviceMemoryError`, one line).

    ``free``: the bytes free (default :func:`free_device_bytes`; ``None`` there: nothing is
    checked). Needed is the estimated step (:attr:`MemoryEstimate.step`: the resident part is
    already allocated) times :data:`HEADROOM`. Returns the estimate.
    """
    from ..io.atomic import format_bytes

    estimate = estimate_for_run(run)
    if free is None:
        free = free_device_bytes(run.device)
    needed = HEADROOM * estimate.step
    if free is None or needed <= free:
        return estimate
    cfg = run.config

    def fits(batch: int, micro: int | None = None) -> bool:
        return HEADROOM * estimate_for_run(run, batch=batch, micro_batch=micro).step <= free

    at = f"batch {cfg.batch}" + (f" (micro-batch {estimate.micro_batch})" if estimate.micro_batch < cfg.batch else "")
    head = (
        f"{at} at box {run.box} needs about {format_bytes(needed)} of {run.device} memory per step (estimate, "
        f"with {HEADROOM - 1:.0%} headroom) but only {format_bytes(free)} is free there"
    )
    best = largest_batch(fits, cfg.batch - 1)
    micro = largest_batch(lambda m: fits(cfg.batch, m), cfg.batch - 1)
    if best == 0:
        advice = "even one particle at a time does not fit: free the GPU (other processes), or train at a smaller --box or --latent-box"
    elif micro == 0:
        advice = f"the largest batch that fits is {best} (--batch {best})"
    else:
        advice = (
            f"the largest batch that fits is {best} (--batch {best}), or keep --batch {cfg.batch} with "
            f"--micro-batch {micro} (the same result, slower)"
        )
    raise DeviceMemoryError(f"{head}; {advice}")
