"""The networks the lab trains."""

from normlab.models.deep_cnn import DeepCNN
from normlab.models.lenet import AvgPool2d, LeNet
from normlab.models.vit import NextRowTransformer, VisionTransformer

__all__ = ["AvgPool2d", "DeepCNN", "LeNet", "NextRowTransformer", "VisionTransformer"]
