"""Training: auto-decoder latents, losses, schedule, event-generating loop.

A feature room: may import config/conventions and core (io, ops, mesh, model), never
another feature (simulate, explore, reconstruct, evaluate import it, not the other way).
The loop (:mod:`.loop`) sequences :mod:`.run_state`, :mod:`.step`, :mod:`.latent_state`,
:mod:`.metrics` and :mod:`.outputs`.
"""

#: What a run imports on its way to the first step beyond :mod:`.loop` (the readers, the image
#: check, the variability start, and torch's compiler, which torch imports at the first
#: optimiser: 3-4 s of imports, stretches of 0.1-0.9 s holding the GIL). A front end imports them
#: ahead, in a worker (the Train widget while its form is filled in), so that a run's set-up does
#: not stall the window; ``tests/training/test_run_imports.py`` checks that nothing else is left.
RUN_IMPORTS = (
    "napari_flex3d.training.loop",
    "napari_flex3d.training.setup",
    "napari_flex3d.training.variability",
    "napari_flex3d.io.particles",
    "napari_flex3d.io.image_check",
    "napari_flex3d.io.mrc",
    "napari_flex3d.ops.ctf",
    "napari_flex3d.ops.fsc",
    "torch._dynamo",
    "tqdm.auto",
    "starfile",
    "mrcfile",
)
