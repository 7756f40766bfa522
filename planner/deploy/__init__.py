"""Deployment (no torch): per-device manifests with their built artifacts, and the report."""
