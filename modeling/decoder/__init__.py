"""Alpha decoders."""

from .detail_capture import DetailCapture

__all__ = ["DetailCapture"]
