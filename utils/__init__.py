"""Utilities outside training: device and precision, memory, the token budget, atomic file
writes and routing pictures (import the submodules: ``from utils.device import autocast``)."""
