"""Semantic segmentation: PSPNet, FCN and DeepLabV3 over dilated ResNets, by name (family "segmentation").

Models return ``{"out": N x K x H x W, "aux": N x K x H x W}`` logits at input resolution; see `builders`.
"""

from datakd.models.segmentation.builders import build_segmenter

__all__ = ["build_segmenter"]
