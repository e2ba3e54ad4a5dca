"""Training: schedule, ray batches from the cache, checkpoints, DDP, the loop."""
