"""The laboratory: experiments that show why, where and when normalization helps.

:mod:`~normlab.lab.cells` (resumable units of work), :mod:`~normlab.lab.study` (the runner),
:mod:`~normlab.lab.report` (one document for every experiment) and
:mod:`normlab.lab.experiments` (one module per experiment).
"""
