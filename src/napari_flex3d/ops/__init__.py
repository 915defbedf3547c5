"""Operators: rotations, CTF, Fourier tools, reference projection, convect-project splat, FSC."""
