"""The fast paths of the norms: what :mod:`normlab.functional._autograd` runs eagerly.

Each module holds one norm's :class:`~normlab.functional._autograd.FastPath` s: a call into
normlab's kernels (:func:`normlab.kernels.ops_for`: the C++ loops on CPU, Triton on CUDA)
and the same formulas as in-place tensor arithmetic for everything else (half precision on
CPU, CUDA without Triton), with a function ``fast_path`` that picks between them. The
layers with parameters beyond ``weight`` and ``bias`` (FRN's ``tau`` and learned ``eps``,
EvoNorm's ``v``, DyT's ``alpha``) have one ``autograd.Function`` each instead
(``filter_response``, ``evonorm``, ``dynamic_tanh``): in-place tensor arithmetic, entered
where :func:`normlab.functional._autograd.eager` allows, with the closed form of their
norm's module for higher derivatives. The formulas are those of the norm's own module
(``normlab.functional.batchnorm``, ...); these are how they run fast: few passes, few
allocations, sums of squares as squared norms of contiguous rows, scalars in the
operations' own arguments.
"""
