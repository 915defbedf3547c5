"""The 3DFlex model: flow generator, canonical map, composed forward model."""
