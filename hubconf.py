"""torch.hub entry points: MEMatte as a :class:`predictor.MattingPredictor`.

    import torch

    predictor = torch.hub.load(
        "path/to/this/repository", "mematte_vits", source="local",
        checkpoint="MEMatte_ViTS_DIM.pth", device="cuda",
    )
    alpha = predictor("photo.jpg", "trimap.png")  # [H, W] float32 in [0, 1]

``torch.hub.list(repo, source="local")`` lists the entries. Each takes ``checkpoint=`` (a local
file, or a URL: downloaded once into torch.hub's cache, ``<torch.hub.get_dir()>/checkpoints``, as
``torch.hub.load_state_dict_from_url`` does, then read by the project's checkpoint reader, which
refuses pickled objects unless ``trust_checkpoint=True``) and the keyword arguments of
:meth:`MattingPredictor.from_config` (``device``, ``precision``, ``max_number_token``,
``patch_decoder``, ``overrides``, ``segmenter``). Without a checkpoint the weights are random
(with a warning).

With ``segmenter=`` (a SAM, SAM-HQ or SAM 2 hub id or ``save_pretrained`` folder, see
``docs/prompts.md``) the predictor also takes a box or clicks instead of a trimap::

    predictor = torch.hub.load(
        "path/to/this/repository", "mematte_vits", source="local",
        checkpoint="MEMatte_ViTS_DIM.pth", segmenter="facebook/sam-vit-base",
    )
    alpha = predictor("photo.jpg", box=(40, 60, 900, 1200), points=[(500, 700)])

The official checkpoints are Google Drive links (README, Model zoo), which are not direct
downloads: fetch the file in a browser (or with a Google Drive client) and pass its path.
"""

from __future__ import annotations

# torch.hub lists every public callable of this module as an entry point: names that are not
# entry points are imported under a leading underscore.
import urllib.parse as _urlparse
from pathlib import Path as _Path
from typing import Any as _Any

import torch

from predictor.matting import MattingPredictor as _MattingPredictor

dependencies = ["torch", "numpy", "cv2", "PIL", "scipy", "timm", "fvcore", "omegaconf", "hydra"]

REPO_DIR = _Path(__file__).resolve().parent
CONFIG_S = "configs/MEMatte_S_topk0.25_win_global_long.py"
CONFIG_B = "configs/MEMatte_B_topk0.25_win_global_long.py"
# A URL is anything with a scheme: http(s)://, file://, ...
URL_MARK = "://"


def _checkpoint_file(checkpoint: str | _Path | None) -> _Path | None:
    """A local checkpoint path; a URL is downloaded into torch.hub's cache first (once)."""
    if checkpoint is None or URL_MARK not in str(checkpoint):
        return None if checkpoint is None else _Path(checkpoint)
    url = str(checkpoint)
    cache = _Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache / _Path(_urlparse.urlparse(url).path).name
    if not cached.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    return cached


def mematte(
    config_file: str | _Path, checkpoint: str | _Path | None = None, **predictor_kwargs: _Any
) -> _MattingPredictor:
    """A predictor for any config.

    Args:
        config_file: a config file; a relative path is taken in this repository first.
        checkpoint: local path or URL of the weights; None: random weights (with a warning).
        **predictor_kwargs: :meth:`MattingPredictor.from_config` keyword arguments.
    """
    config = _Path(config_file)
    if not config.is_absolute() and (REPO_DIR / config).is_file():
        config = REPO_DIR / config
    return _MattingPredictor.from_config(config, _checkpoint_file(checkpoint), **predictor_kwargs)


def mematte_vits(
    checkpoint: str | _Path | None = None, **predictor_kwargs: _Any
) -> _MattingPredictor:
    """MEMatte with a ViT-S backbone, trained on Composition-1k (``MEMatte_ViTS_DIM.pth``)."""
    return mematte(CONFIG_S, checkpoint, **predictor_kwargs)


def mematte_vitb(
    checkpoint: str | _Path | None = None, **predictor_kwargs: _Any
) -> _MattingPredictor:
    """MEMatte with a ViT-B backbone, trained on Composition-1k (``MEMatte_ViTB_DIM.pth``)."""
    return mematte(CONFIG_B, checkpoint, **predictor_kwargs)


def mematte_vits_aim(
    checkpoint: str | _Path | None = None, **predictor_kwargs: _Any
) -> _MattingPredictor:
    """MEMatte ViT-S trained on mixed data for real-world images (the official AIM-500
    checkpoint; same architecture, so the ViT-S config)."""
    return mematte(CONFIG_S, checkpoint, **predictor_kwargs)
