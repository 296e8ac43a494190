"""The training loop: the run path (session), the trainer and its update, the parts of a run, batches, prompts, precision, the planner."""
