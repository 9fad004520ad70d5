"""Learning: trajectories to batches, the scoring pass and the update (forward pass, local, distributed and per-role learners, padding-free attention)."""
