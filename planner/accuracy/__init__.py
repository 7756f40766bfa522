"""Accuracy: data sets, slimmable training, evaluation, and the accuracy table (torch-free) they fill."""
