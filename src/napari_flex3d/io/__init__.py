"""File formats: STAR, cryoSPARC .cs, MRC, particle stacks, checkpoints, exports."""
