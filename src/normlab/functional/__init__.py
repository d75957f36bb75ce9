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
"""

from normlab.functional._common import DtypeError, ShapeError
from normlab.functional.batchnorm import batch_norm
from normlab.functional.frozen import frozen_batch_norm
from normlab.functional.ghost import ghost_batch_norm
from normlab.functional.groupnorm import group_norm
from normlab.functional.instancenorm import instance_norm
from normlab.functional.layernorm import layer_norm
from normlab.functional.localresponsenorm import local_response_norm
from normlab.functional.renorm import batch_renorm
from normlab.functional.rmsnorm import rms_norm

__all__ = [
    "DtypeError",
    "ShapeError",
    "batch_norm",
    "batch_renorm",
    "frozen_batch_norm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "rms_norm",
]
