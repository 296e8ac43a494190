"""Several processes: the Collective interface, torch.distributed, FSDP, the torchrun launcher."""
