"""Foundations every other package uses: errors, whole-or-nothing files (io, diskspace), checkpoint files that are
checked on load, the non-finite guard, assets resolved like their libraries resolve them, progress bars, SLURM."""
