"""Tetrahedral mesh: masks, tetgen build, barycentric interpolation, rigidity prior."""
