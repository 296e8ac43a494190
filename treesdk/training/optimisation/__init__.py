"""The optimiser of a run: optimisers, learning-rate schedules, the EMA of the weights."""
