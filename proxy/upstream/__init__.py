"""Step 5, forward: sending events upstream and streaming everything else."""
