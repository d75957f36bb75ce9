"""The networks the lab trains."""

from normlab.models.lenet import AvgPool2d, LeNet
from normlab.models.vit import NextRowTransformer, VisionTransformer

__all__ = ["AvgPool2d", "LeNet", "NextRowTransformer", "VisionTransformer"]
