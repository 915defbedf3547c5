"""Reconstruction: rigid back-projection, motion-corrected half maps, validation."""
