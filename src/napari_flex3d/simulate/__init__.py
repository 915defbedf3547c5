"""Synthetic flexible molecules with ground truth."""
