"""Generation: the schedule of a decoding run (r, tau1, tau2, s per step), the decoding loop, editing inputs, and the
pictures of a run (grids, reveal strips, schedule curves)."""
