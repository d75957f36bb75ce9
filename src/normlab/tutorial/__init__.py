"""The course tutorial: its batch norm API corrected (:mod:`~normlab.tutorial.api`), its
pipeline end to end (:mod:`~normlab.tutorial.pipeline`) and its report
(:mod:`~normlab.tutorial.report`)."""

from normlab.tutorial.api import (
    BatchNorm,
    BNLeNet,
    BNLeNetScratch,
    BNParameters,
    batch_norm,
    bn_parameters,
    format_bn_parameters,
    print_bn_parameters,
    train_and_evaluate,
)

__all__ = [
    "BNLeNet",
    "BNLeNetScratch",
    "BNParameters",
    "BatchNorm",
    "batch_norm",
    "bn_parameters",
    "format_bn_parameters",
    "print_bn_parameters",
    "train_and_evaluate",
]
