"""Training: auto-decoder latents, losses, schedule, event-generating loop.

A feature room: may import config/conventions and core (io, ops, mesh, model), never
another feature (simulate, explore, reconstruct, evaluate import it, not the other way).
The loop (:mod:`.loop`) sequences :mod:`.run_state`, :mod:`.step`, :mod:`.latent_state`,
:mod:`.metrics` and :mod:`.outputs`.
"""
