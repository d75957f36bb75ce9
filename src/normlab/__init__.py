"""normlab: normalization layers written from scratch, proven equal to torch.nn, and a lab.

Import the layers from :mod:`normlab.nn` and the maths from :mod:`normlab.functional`.
"""

__version__ = "0.1.0"
