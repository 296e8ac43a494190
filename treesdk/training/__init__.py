"""Training: the run configuration, the trainer, the policy update, checkpoints, distributed runs, export."""
