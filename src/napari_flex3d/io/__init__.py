"""io, a core room: reading and writing files, and nothing else.

Particle files (RELION STAR, cryoSPARC ``.cs``) become a ``ParticleSet`` through
``io.particles`` (``read_particles``, ``write_star``, ``write_cs``), built from:

- ``star`` / ``cryosparc``: the two file formats (tables, records);
- ``star_particles`` / ``cs_particles``: what their columns mean for particles;
- ``optics``: optics groups (microscope and CTF constants per group of particles);
- ``particle_set``: the ``ParticleSet`` container;
- ``image_source``: finding image stacks and reading rows from memory maps;
- ``image_check``: finding the images no job can use (NaN/Inf, constant) and leaving them out;
- ``particle_names``: a particle's name (stack file and index), to match files in any row order;
- ``half_sets``: the one half-set encoding (int8 0 = A, 1 = B, -1 = unknown) and its converters.

Also ``mrc`` (maps and stacks), ``checkpoint`` (training checkpoints), ``prefetch``
(reading the next minibatch in a thread) and ``info`` (``flex3d info``).

May import ``config``, ``conventions`` and third-party libraries; never a feature room
(reconstruct, training, explore, simulate), ``api``, ``cli`` or ``_napari``. Importing
this package imports nothing else, so ``io.mrc`` stays quick to load.
"""
