"""A crafted checkpoint whose unpickling runs code: loading it creates a marker folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class _CreateMarker:
    """Pickles as a call of ``os.mkdir(marker)``: unpickling it with ``weights_only=False``
    creates the folder, which shows that code stored in the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def save_untrusted_checkpoint(path: Path, state_dict: dict, marker: Path) -> None:
    """A checkpoint ``{"model": state_dict, "payload": ...}`` whose payload creates ``marker``."""
    torch.save({"model": state_dict, "payload": _CreateMarker(marker)}, path)
