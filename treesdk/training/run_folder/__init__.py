"""What a run writes into its folder: checkpoints, loggers, live progress, profiles, the folder rules."""
