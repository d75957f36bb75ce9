"""Batch norm on CUDA: normlab's formulas as Triton kernels, one or two launches each way.

On the GPU a batch norm written as tensor operations costs ten or more kernel launches and
as many passes over memory; these kernels read the input twice forward (the statistics,
then the output) and twice backward, as ``torch.nn``'s own kernels do.

The contiguous input ``(N, C, *)`` is viewed as ``(N, C, L)``, ``L`` = the product of the
spatial sizes (1 for ``(N, C)``). Per channel ``c``, over its ``n = N * L`` values, with
``x0 = x[0, c, 0]`` the channel's first value (a shift that keeps every sum small, so that
inputs far from zero lose no precision, as in :mod:`normlab.functional.batchnorm`)::

    forward   launch 1: per split s   d_s = sum(x - x0),  q_s = sum((x - x0)^2)
              launch 2: d = sum_s d_s,  q = sum_s q_s,  offset = d / n
                        var = q / n - offset^2,  invstd = rsqrt(var + eps)
                        y = (x - x0 - offset) * a + bias,  a = weight * invstd
                        running_mean += momentum * (x0 + offset - running_mean)
                        running_var  += momentum * (var * n / (n - 1) - running_var)
    backward  launch 1: per split s   g_s = sum(dy),  p_s = sum(dy * (x - x0 - offset))
              launch 2: dbias = sum_dy = sum_s g_s,  dweight = invstd * sum_s p_s
                        dx = dy * a + (x - x0 - offset) * k2 + k3
                        k2 = -a * invstd * dweight / n,  k3 = -a * sum_dy / n

The grid is ``(channel blocks, splits)``: program ``(j, s)`` owns ``BLOCK_C`` channels and
the ``s``-th share (``chunk`` values) of each one's ``n`` values, counted ``k = i * L + l``
over sample ``i`` and position ``l``; it walks them in tiles of ``BLOCK_C x BLOCK_K``
values (``BLOCK_K`` consecutive ``k``, which may span several samples: a tile is as full
for 8 x 8 images as for 56 x 56 ones). ``BLOCK_C`` channels are taken together only where
a channel's row is short (``L`` below ``CONTIGUOUS``), so that a tile's loads still cover
whole stretches of memory. Launch 1 writes one partial sum per split and channel, launch 2
adds them up in every program (a few dozen numbers) and its programs ``s == 0`` write the
per-channel results. Where a program can take all of its channels' values
(``ONE_PROGRAM_LIMIT`` or fewer), there is one launch each way: it computes the sums and
then the output (its second read hits the cache), since launches cost more than the
arithmetic there. Sums run in float32 (float64 for float64 input); half-precision inputs
keep float32 statistics.

What the forward saves for the backward is ``offset`` (the mean minus ``x0``) in place of
the mean: the backward re-reads ``x0`` from the input and centres exactly as the forward.
"""

import functools
import math
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch import Tensor

from normlab.kernels.triton.common import (
    acc_type,
    dtypes,
    halves,
    joined,
    launch,
    programs,
    ptr,
    stat_dtype,
)

MIN_WORK = 4096  # values per program of a split launch at the least
# A split launch aims at PROGRAMS_PER_SM programs per multiprocessor, in tiles of TILE
# values (half as many for float64 sums): the fastest pair of tools/gpu_profile.py's sweep
# on an H200 at bench bandwidth's shape (docs/results/gpu.md).
PROGRAMS_PER_SM = 16
TILE = 2048
CONTIGUOUS = 32  # values a tile's row should span in memory (a 128-byte line of float32)
ONE_PROGRAM_LIMIT = 16384  # values per program up to which one launch each way does it all


@triton.jit
def _tile(k0, c, c_ok, end, C, L, BLOCK_K: tl.constexpr):
    """Offsets and mask of the tile of channels ``c`` and values ``k0 + [0, BLOCK_K)`` of
    each, ``k = i * L + l`` (sample ``i``, position ``l``); values from ``end`` on masked."""
    k = k0 + tl.arange(0, BLOCK_K)
    i = k // L
    at = i.to(tl.int64) * C * L + (k - i * L)
    return at[None, :] + c.to(tl.int64)[:, None] * L, c_ok[:, None] & (k[None, :] < end)


@triton.jit
def _sums(a_ptr, x_ptr, x0, offset, c, c_ok, start, end, C, L,
          BACKWARD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
          ACC: tl.constexpr):  # fmt: skip
    """Over values ``[start, end)`` of channels ``c``, with ``v = x - x0 - offset``:
    forward ``sum(v)`` and ``sum(v^2)``; backward ``sum(dy)`` and ``sum(dy * v)``.

    ``x - x0`` first: exact for ``x`` near ``x0`` (Sterbenz), so inputs far from zero keep
    their precision; ``x0 + offset`` rounded would be off by half an ulp of the mean."""
    first = tl.zeros([BLOCK_C, BLOCK_K], ACC)
    second = tl.zeros([BLOCK_C, BLOCK_K], ACC)
    for k0 in range(start, end, BLOCK_K):
        at, ok = _tile(k0, c, c_ok, end, C, L, BLOCK_K)
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC)
        v = tl.where(ok, (x - x0[:, None]) - offset[:, None], 0.0)
        if BACKWARD:
            dy = tl.load(a_ptr + at, mask=ok, other=0.0).to(ACC)
            first += dy
            second += dy * v
        else:
            first += v
            second += v * v
    return tl.sum(first, 1), tl.sum(second, 1)


@triton.jit
def _totals(part_ptr, c, c_ok, C, S, BLOCK_S: tl.constexpr):
    """The two per-channel totals of the ``(S, 2, C)`` partial sums, for channels ``c``."""
    split = tl.arange(0, BLOCK_S)
    ok = (split[:, None] < S) & c_ok[None, :]
    at = part_ptr + split[:, None] * 2 * C + c[None, :]
    first = tl.sum(tl.load(at, mask=ok, other=0.0), 0)
    return first, tl.sum(tl.load(at + C, mask=ok, other=0.0), 0)


@triton.jit
def _affine(x_ptr, y_ptr, x0, offset, scale, shift, c, c_ok, start, end, C, L,
            BLOCK_K: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """``y = (x - x0 - offset) * scale + shift`` over values ``[start, end)`` of channels ``c``."""
    for k0 in range(start, end, BLOCK_K):
        at, ok = _tile(k0, c, c_ok, end, C, L, BLOCK_K)
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC)
        y = ((x - x0[:, None]) - offset[:, None]) * scale[:, None] + shift[:, None]
        tl.store(y_ptr + at, y, mask=ok)


@triton.jit
def _grad_affine(dy_ptr, x_ptr, dx_ptr, x0, offset, scale, k2, k3, c, c_ok, start, end, C, L,
                 BLOCK_K: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """``dx = dy * scale + (x - x0 - offset) * k2 + k3`` over values ``[start, end)``."""
    for k0 in range(start, end, BLOCK_K):
        at, ok = _tile(k0, c, c_ok, end, C, L, BLOCK_K)
        x = tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + at, mask=ok, other=0.0).to(ACC)
        v = (x - x0[:, None]) - offset[:, None]
        dx = dy * scale[:, None] + v * k2[:, None] + k3[:, None]
        tl.store(dx_ptr + at, dx, mask=ok)


@triton.jit
def _share(NL, chunk, ONE_LAUNCH: tl.constexpr):
    """This program's channels' values: ``[start, end)``, all of them for one launch."""
    if ONE_LAUNCH:
        return 0, NL
    start = tl.program_id(1) * chunk
    return start, tl.minimum(start + chunk, NL)


@triton.jit
def _partial_sums(a_ptr, x_ptr, offset_ptr, part_ptr, NL, C, L, chunk,
                  BACKWARD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                  ACC: tl.constexpr):  # fmt: skip
    """Launch 1 either way: one pair of partial sums per split and channel into ``part``."""
    s = tl.program_id(1)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x0 = tl.load(x_ptr + c * L, mask=c_ok, other=0.0).to(ACC)
    offset = tl.zeros([BLOCK_C], ACC)
    if BACKWARD:
        offset = tl.load(offset_ptr + c, mask=c_ok, other=0.0).to(ACC)
    start, end = _share(NL, chunk, False)
    first, second = _sums(a_ptr, x_ptr, x0, offset, c, c_ok, start, end, C, L,
                          BACKWARD, BLOCK_C, BLOCK_K, ACC)  # fmt: skip
    tl.store(part_ptr + s * 2 * C + c, first, mask=c_ok)
    tl.store(part_ptr + s * 2 * C + C + c, second, mask=c_ok)


@triton.jit
def _forward(x_ptr, y_ptr, part_ptr, w_ptr, b_ptr, offset_ptr, invstd_ptr, rmean_ptr, rvar_ptr,
             NL, C, L, S, chunk, count_hi, count_lo, momentum_hi, momentum_lo, eps_hi, eps_lo,
             ONE_LAUNCH: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
             HAS_RMEAN: tl.constexpr, HAS_RVAR: tl.constexpr, BLOCK_C: tl.constexpr,
             BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Launch 2 forward (or the only one): statistics, then ``y``; programs ``s == 0``
    write ``offset``, ``invstd`` and the running statistics.

    The scalars come in two float32 halves each (``triton_common.halves``): one float32
    would put the running statistics of a float64 input off by 1e-8."""
    s = tl.program_id(1)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x0 = tl.load(x_ptr + c * L, mask=c_ok, other=0.0).to(ACC)
    start, end = _share(NL, chunk, ONE_LAUNCH)
    if ONE_LAUNCH:
        zero = tl.zeros([BLOCK_C], ACC)
        d, q = _sums(x_ptr, x_ptr, x0, zero, c, c_ok, start, end, C, L, False, BLOCK_C, BLOCK_K,
                     ACC)  # fmt: skip
    else:
        d, q = _totals(part_ptr, c, c_ok, C, S, BLOCK_S)
    n_values = joined(count_hi, count_lo, ACC)
    offset = d / n_values
    var = tl.maximum(q / n_values - offset * offset, 0.0)
    invstd = 1.0 / tl.sqrt(var + joined(eps_hi, eps_lo, ACC))
    momentum = joined(momentum_hi, momentum_lo, ACC)
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=c_ok, other=1.0).to(ACC)
    shift = tl.zeros([BLOCK_C], ACC)
    if HAS_B:
        shift = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(ACC)
    if s == 0:
        tl.store(offset_ptr + c, offset, mask=c_ok)
        tl.store(invstd_ptr + c, invstd, mask=c_ok)
        if HAS_RMEAN:
            rmean = tl.load(rmean_ptr + c, mask=c_ok, other=0.0).to(ACC)
            rmean += momentum * (x0 + offset - rmean)
            tl.store(rmean_ptr + c, rmean, mask=c_ok)
        if HAS_RVAR:
            rvar = tl.load(rvar_ptr + c, mask=c_ok, other=0.0).to(ACC)
            rvar += momentum * (var * n_values / (n_values - 1.0) - rvar)
            tl.store(rvar_ptr + c, rvar, mask=c_ok)
    _affine(x_ptr, y_ptr, x0, offset, scale, shift, c, c_ok, start, end, C, L, BLOCK_K, ACC)


@triton.jit
def _backward(dy_ptr, x_ptr, dx_ptr, part_ptr, w_ptr, offset_ptr, invstd_ptr, dw_ptr, db_ptr,
              NL, C, L, S, chunk, count_hi, count_lo,
              ONE_LAUNCH: tl.constexpr, HAS_W: tl.constexpr, BLOCK_C: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Launch 2 backward (or the only one): ``dx``; programs ``s == 0`` write the
    parameter gradients."""
    s = tl.program_id(1)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    x0 = tl.load(x_ptr + c * L, mask=c_ok, other=0.0).to(ACC)
    offset = tl.load(offset_ptr + c, mask=c_ok, other=0.0).to(ACC)
    start, end = _share(NL, chunk, ONE_LAUNCH)
    if ONE_LAUNCH:
        sum_dy, dot = _sums(dy_ptr, x_ptr, x0, offset, c, c_ok, start, end, C, L, True,
                            BLOCK_C, BLOCK_K, ACC)  # fmt: skip
    else:
        sum_dy, dot = _totals(part_ptr, c, c_ok, C, S, BLOCK_S)
    invstd = tl.load(invstd_ptr + c, mask=c_ok, other=0.0).to(ACC)
    dweight = dot * invstd
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + c, mask=c_ok, other=1.0).to(ACC)
    n_values = joined(count_hi, count_lo, ACC)
    k2 = -scale * invstd * dweight / n_values
    k3 = -scale * sum_dy / n_values
    if s == 0:
        tl.store(dw_ptr + c, dweight, mask=c_ok)
        tl.store(db_ptr + c, sum_dy, mask=c_ok)
    _grad_affine(dy_ptr, x_ptr, dx_ptr, x0, offset, scale, k2, k3, c, c_ok, start, end, C, L,
                 BLOCK_K, ACC)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Launchers: the same signatures as the CPU operators torch.ops.normlab.batch_norm_*
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How an ``(N, C, L)`` input is cut: tiles of ``block_c x block_k`` values, the grid
    ``(channel blocks, splits)``, ``chunk`` values of each channel per split (``values =
    N * L`` in all); one launch each way when there is one split."""

    values: int
    c: int
    length: int
    block_c: int
    block_k: int
    splits: int
    chunk: int
    # worked out once here, not on every launch (triton.cdiv and next_power_of_2 called
    # from Python cost microseconds each)
    grid: tuple[int, int] = field(init=False, compare=False)
    block_s: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", (-(-self.c // self.block_c), self.splits))
        object.__setattr__(self, "block_s", 1 << (self.splits - 1).bit_length())

    @property
    def one_launch(self) -> bool:
        return self.splits == 1

    def blocks(self) -> dict[str, int]:
        return {"BLOCK_C": self.block_c, "BLOCK_K": self.block_k, "BLOCK_S": self.block_s}


@functools.lru_cache(maxsize=256)
def plan(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Plan:
    """The tile: ``BLOCK_C`` channels (enough for rows of ``CONTIGUOUS`` values) by
    ``BLOCK_K`` values, ``TILE`` in all. One launch each way when a program can take all
    of its channels' values (``ONE_PROGRAM_LIMIT``); else each channel block's values are
    split to give the GPU enough programs (``triton_common.programs``), each with
    ``MIN_WORK`` values or more."""
    n, c = shape[0], shape[1]
    length = math.prod(shape[2:])
    values = n * length
    tile = TILE // 2 if dtype == torch.float64 else TILE  # float64 sums: twice the registers
    per_line = triton.next_power_of_2(-(-CONTIGUOUS // length))  # channels to span CONTIGUOUS
    block_c = min(triton.next_power_of_2(c), per_line, tile)
    block_k = min(tile // block_c, triton.next_power_of_2(values))
    per_program = min(block_c, c) * values
    splits = 1
    if per_program > ONE_PROGRAM_LIMIT:
        wanted = triton.cdiv(programs(device, PROGRAMS_PER_SM), triton.cdiv(c, block_c))
        splits = max(1, min(wanted, per_program // MIN_WORK))
    chunk = triton.cdiv(triton.cdiv(values, splits), block_k) * block_k
    return Plan(values, c, length, block_c, block_k, triton.cdiv(values, chunk), chunk)


def batch_norm_forward(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training forward: ``(out, offset, invstd)``; running statistics updated in place.

    ``offset`` is the mean minus each channel's first value (what the backward needs).
    """
    input = input.contiguous()
    p = plan(tuple(input.shape), input.dtype, input.device)
    stat = stat_dtype(input.dtype)
    out = torch.empty_like(input)
    offset = torch.empty(p.c, dtype=stat, device=input.device)
    invstd = torch.empty_like(offset)
    acc = acc_type(input.dtype)
    types = dtypes(input, weight, bias, running_mean, running_var)
    partial = offset  # a placeholder pointer for one launch
    if not p.one_launch:
        partial = torch.empty((p.splits, 2, p.c), dtype=stat, device=input.device)
        launch(
            _partial_sums, p.grid, (p, input.dtype, False),
            (input, input, offset, partial, p.values, p.c, p.length, p.chunk),
            BACKWARD=False, BLOCK_C=p.block_c, BLOCK_K=p.block_k, ACC=acc,
        )  # fmt: skip
    launch(
        _forward, p.grid, (p, *types),
        (input, out, partial, ptr(weight, offset), ptr(bias, offset), offset, invstd,
         ptr(running_mean, offset), ptr(running_var, offset),
         p.values, p.c, p.length, p.splits, p.chunk,
         *halves(p.values), *halves(momentum), *halves(eps)),
        ONE_LAUNCH=p.one_launch, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_RMEAN=running_mean is not None, HAS_RVAR=running_var is not None,
        ACC=acc, **p.blocks(),
    )  # fmt: skip
    return out, offset, invstd


def batch_norm_backward(
    grad_out: Tensor, input: Tensor, offset: Tensor, invstd: Tensor, weight: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` from what :func:`batch_norm_forward` returned."""
    grad_out, input = grad_out.contiguous(), input.contiguous()
    p = plan(tuple(input.shape), input.dtype, input.device)
    dx = torch.empty_like(input)
    dweight = torch.empty_like(offset)
    dbias = torch.empty_like(offset)
    acc = acc_type(input.dtype)
    types = dtypes(input, grad_out, weight)
    partial = offset
    if not p.one_launch:
        partial = torch.empty((p.splits, 2, p.c), dtype=offset.dtype, device=input.device)
        launch(
            _partial_sums, p.grid, (p, *types[:2], True),
            (grad_out, input, offset, partial, p.values, p.c, p.length, p.chunk),
            BACKWARD=True, BLOCK_C=p.block_c, BLOCK_K=p.block_k, ACC=acc,
        )  # fmt: skip
    launch(
        _backward, p.grid, (p, *types),
        (grad_out, input, dx, partial, ptr(weight, offset), offset, invstd, dweight, dbias,
         p.values, p.c, p.length, p.splits, p.chunk, *halves(p.values)),
        ONE_LAUNCH=p.one_launch, HAS_W=weight is not None, ACC=acc, **p.blocks(),
    )  # fmt: skip
    return dx, dweight, dbias
