"""The maths of normalization, written from tensor arithmetic and reductions.

Every function has the signature of its ``torch.nn.functional`` twin and calls none of
torch's normalization kernels.

One module per norm, each opening with its formula and closed-form backward:
:mod:`~normlab.functional.batchnorm`, :mod:`~normlab.functional.instancenorm`,
:mod:`~normlab.functional.layernorm`, :mod:`~normlab.functional.groupnorm`,
:mod:`~normlab.functional.rmsnorm`, :mod:`~normlab.functional.localresponsenorm`,
:mod:`~normlab.functional.sync_batchnorm` (statistics over a process group). Their fast
paths (:mod:`normlab.kernels`, in-place arithmetic in ``functional._fast``) run through one
autograd bridge, ``functional._autograd``; ``functional._common`` holds what they share.

Layers ``torch.nn`` lacks:

- :mod:`normlab.functional.frozen`: ``frozen_batch_norm``, fixed statistics in every mode.
- :mod:`normlab.functional.renorm`: ``batch_renorm`` (Ioffe 2017).
- :mod:`normlab.functional.ghost`: ``ghost_batch_norm`` (Hoffer et al. 2017).
- :mod:`normlab.functional.weight_standardization`: ``standardize_weight`` (Qiao et al. 2019).
- :mod:`normlab.functional.filter_response`: ``filter_response_norm`` with the TLU (Singh &
  Krishnan 2020).
- :mod:`normlab.functional.evonorm`: ``evonorm_b0``, ``evonorm_s0`` (Liu et al. 2020).
- :mod:`normlab.functional.dynamic_tanh`: ``dynamic_tanh`` (Zhu et al. 2025).
"""

from normlab.functional._common import DtypeError, ShapeError
from normlab.functional.batchnorm import batch_norm
from normlab.functional.dynamic_tanh import dynamic_tanh
from normlab.functional.evonorm import evonorm_b0, evonorm_s0
from normlab.functional.filter_response import filter_response_norm
from normlab.functional.frozen import frozen_batch_norm
from normlab.functional.ghost import ghost_batch_norm
from normlab.functional.groupnorm import group_norm
from normlab.functional.instancenorm import instance_norm
from normlab.functional.layernorm import layer_norm
from normlab.functional.localresponsenorm import local_response_norm
from normlab.functional.renorm import batch_renorm
from normlab.functional.rmsnorm import rms_norm
from normlab.functional.weight_standardization import standardize_weight

__all__ = [
    "DtypeError",
    "ShapeError",
    "batch_norm",
    "batch_renorm",
    "dynamic_tanh",
    "evonorm_b0",
    "evonorm_s0",
    "filter_response_norm",
    "frozen_batch_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "rms_norm",
    "standardize_weight",
]
