"""Shared building blocks: augmentation, losses, schedules, data, checkpoints, plotting."""
