"""napari-flex3d: open 3D Flexible Refinement for cryo-EM."""

__version__ = "0.1.0"
