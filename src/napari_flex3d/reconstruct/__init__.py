"""Reconstruction, a feature room: rigid back-projection (:mod:`.rigid`), motion-corrected half
maps (:mod:`.halfmaps`, which drives :mod:`.solver`, :mod:`.halfsets` and :mod:`.report`) and
their validation (:mod:`.validation`).

May import ``config``, ``conventions``, the core rooms (``io``, ``ops``, ``mesh``, ``model``) and
``training`` (device choice, torchrun); never ``api``, ``cli`` or ``_napari``.
"""
