"""The networks the lab trains."""

from normlab.models.lenet import AvgPool2d, LeNet

__all__ = ["AvgPool2d", "LeNet"]
