"""Operators, a core room: rotations, CTF, Fourier tools, reference projection, convect-project
splat, FSC; one operator per module, pure functions on torch tensors.

May import ``config``, ``conventions`` and the rest of ``ops``; never a feature room.
"""
