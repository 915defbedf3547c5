"""Training: auto-decoder latents, losses, schedule, event-generating loop."""
