"""Measurement: targets, artifacts for a target, runs here, over SSH or on a Ray fleet, estimates."""
