"""Torch-side surgery on a slimmable network: count, materialise, export, checkpoints, BN calibration."""
