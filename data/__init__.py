"""Datasets, augmentations and test-set readers."""
