"""Utilities every layer may use, importing nothing of the project: devices and precision, pixel
levels, memory readers, distributed helpers (``comm``), atomic file writes, the shared
command-line options, benchmark helpers and routing pictures (import the submodules:
``from utils.device import autocast``)."""
