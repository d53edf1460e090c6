"""A run directory: its file names (`layout`), its local record and resume rules (`store`), its W&B mirror
(`wandb`). The local record is the source of truth; W&B only mirrors it."""
