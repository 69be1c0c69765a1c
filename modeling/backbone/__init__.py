"""Routed plain-ViT backbone and its parts."""

from .attention import Attention
from .ltrm import ECA, LTRM
from .router import Router
from .vit import BackboneOutput, Block, ViT

__all__ = ["ECA", "LTRM", "Attention", "BackboneOutput", "Block", "Router", "ViT"]
