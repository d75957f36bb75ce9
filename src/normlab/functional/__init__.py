"""The maths of normalization, written from tensor arithmetic and reductions.

Every function has the signature of its ``torch.nn.functional`` twin and calls none of
torch's normalization kernels.

- :mod:`normlab.functional.batch`: statistics over the batch (and spatial) dimensions:
  ``batch_norm`` (closed-form backward) and ``instance_norm``.
- :mod:`normlab.functional.feature`: statistics over each sample's features:
  ``layer_norm``, ``group_norm``, ``rms_norm``, ``local_response_norm``.
- :mod:`normlab.functional.frozen`: ``frozen_batch_norm``, fixed statistics in every mode.
"""

from normlab.functional.batch import batch_norm, instance_norm
from normlab.functional.feature import group_norm, layer_norm, local_response_norm, rms_norm
from normlab.functional.frozen import frozen_batch_norm

__all__ = [
    "batch_norm",
    "frozen_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "rms_norm",
]
