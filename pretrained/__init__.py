"""Checkpoint preparation."""
