"""Exploration of a trained run: convected volumes, series on disk, latent paths, particle subsets.

Used by the CLI (through ``api``) and by the napari explorer, so both produce the same
maps and movies. May import L0 (config, conventions), L1 (io, ops, mesh, model) and
``training.schedule``; never Qt.
"""
