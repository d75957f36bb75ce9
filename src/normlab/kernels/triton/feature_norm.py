"""Layer and group norm on CUDA: normlab's formulas as Triton kernels, one program per row.

Both normalise rows: layer norm each sample's last ``D`` values, group norm each
(sample, group) of ``K = C / G`` channels by ``P`` positions. A row is viewed as ``K x P``
values (``K = 1, P = D`` for layer norm) and walked in tiles of ``BLOCK_K x BLOCK_P``. The
affine parameters are per position for layer norm and per channel for group norm. With
``x0`` the row's first value (a shift that keeps the sums small, so that inputs far from
zero keep their precision) and ``S = K * P``::

    forward   offset = mean(x - x0), var = mean((x - x0)^2) - offset^2     (read x)
              rstd = rsqrt(var + eps); xhat = (x - x0 - offset) * rstd
              y = xhat * weight + bias                                     (read x, write y)
    backward  g = dy * weight;  a = sum(g) / S;  b = sum(g * xhat) / S     (read dy, x)
              dx = rstd * (g - a - xhat * b)                        (read dy, x; write dx)
              dweight = sum over rows of dy * xhat;  dbias = sum over rows of dy

The forward saves ``(offset, rstd)`` per row (the bytes ``torch.nn`` saves for its mean and
rstd); the backward re-reads ``x0`` from the input. The parameter gradients are sums over
rows: group norm adds each row's per-channel sums in the backward kernel (``(N, C)``
partials, then summed over ``N``); layer norm, whose parameters are per position, sums
over rows in a second kernel over blocks of positions (split over rows for parallelism).
The operators have the signatures of the CPU ones, ``torch.ops.normlab.layer_norm_*`` and
``group_norm_*``.
"""

import functools

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

TILE = 1024  # values per tile (BLOCK_K * BLOCK_P)


@triton.jit
def _tile(base, k, p0, K, P, BLOCK_P: tl.constexpr):
    """Positions, offsets and mask of the tile of channels ``k``, positions ``p0 + [0,
    BLOCK_P)`` of the row that starts at ``base`` (``K x P`` values)."""
    p = p0 + tl.arange(0, BLOCK_P)
    return p, base + k[:, None] * P + p[None, :], (k[:, None] < K) & (p[None, :] < P)


@triton.jit
def _row_sums(a_ptr, x_ptr, w_ptr, base, g, x0, offset, rstd, K, P,
              BACKWARD: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_W: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Forward: ``sum(v)``, ``sum(v^2)`` with ``v = x - x0``. Backward: ``sum(g)`` and
    ``sum(g * xhat)`` with ``g = dy * weight``, ``xhat = (x - x0 - offset) * rstd``."""
    first = tl.zeros([BLOCK_K, BLOCK_P], ACC)
    second = tl.zeros([BLOCK_K, BLOCK_P], ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        for p0 in range(0, P, BLOCK_P):
            p, at, ok = _tile(base, k, p0, K, P, BLOCK_P)
            v = tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC) - x0
            if BACKWARD:
                xhat = (v - offset) * rstd
                grad = tl.load(a_ptr + at, mask=ok, other=0.0).to(ACC)
                if HAS_W:
                    grad *= _param(w_ptr, g, k, p, K, ok, PER_CHANNEL, 1.0, ACC)
                first += grad
                second += tl.where(ok, grad * xhat, 0.0)
            else:
                v = tl.where(ok, v, 0.0)
                first += v
                second += v * v
    return tl.sum(tl.sum(first, 1), 0), tl.sum(tl.sum(second, 1), 0)


@triton.jit
def _param(ptr, g, k, p, K, ok, PER_CHANNEL: tl.constexpr, other: tl.constexpr,
           ACC: tl.constexpr):  # fmt: skip
    """The affine parameter of each value of a tile: per channel ``g * K + k`` (group
    norm) or per position ``p`` (layer norm)."""
    if PER_CHANNEL:
        value = tl.load(ptr + g * K + k[:, None] + 0 * p[None, :], mask=ok, other=other)
    else:
        value = tl.load(ptr + p[None, :] + 0 * k[:, None], mask=ok, other=other)
    return value.to(ACC)


@triton.jit
def _forward(x_ptr, y_ptr, w_ptr, b_ptr, stats_ptr, G, K, P, count_hi, count_lo, eps_hi, eps_lo,
             PER_CHANNEL: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
             BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """One row: statistics, then ``y``; ``stats[row] = (offset, rstd)``."""
    row = tl.program_id(0)
    g = row % G
    base = row.to(tl.int64) * K * P
    x0 = tl.load(x_ptr + base).to(ACC)
    n_values = joined(count_hi, count_lo, ACC)
    d, q = _row_sums(x_ptr, x_ptr, w_ptr, base, g, x0, 0.0, 1.0, K, P,
                     False, PER_CHANNEL, False, BLOCK_K, BLOCK_P, ACC)  # fmt: skip
    offset = d / n_values
    var = tl.maximum(q / n_values - offset * offset, 0.0)
    rstd = 1.0 / tl.sqrt(var + joined(eps_hi, eps_lo, ACC))
    tl.store(stats_ptr + row * 2, offset)
    tl.store(stats_ptr + row * 2 + 1, rstd)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        for p0 in range(0, P, BLOCK_P):
            p, at, ok = _tile(base, k, p0, K, P, BLOCK_P)
            y = (tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC) - x0 - offset) * rstd
            if HAS_W:
                y *= _param(w_ptr, g, k, p, K, ok, PER_CHANNEL, 1.0, ACC)
            if HAS_B:
                y += _param(b_ptr, g, k, p, K, ok, PER_CHANNEL, 0.0, ACC)
            tl.store(y_ptr + at, y, mask=ok)


@triton.jit
def _backward(dy_ptr, x_ptr, dx_ptr, w_ptr, stats_ptr, part_ptr, G, K, P, count_hi, count_lo,
              NEED_DX: tl.constexpr, CHANNEL_SUMS: tl.constexpr, PER_CHANNEL: tl.constexpr,
              HAS_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
              ACC: tl.constexpr):  # fmt: skip
    """One row: ``dx``; with ``CHANNEL_SUMS`` (group norm) also the row's per-channel
    ``sum(dy * xhat)`` and ``sum(dy)`` into ``part[0 or 1, n, channel]``."""
    row = tl.program_id(0)
    g = row % G
    base = row.to(tl.int64) * K * P
    x0 = tl.load(x_ptr + base).to(ACC)
    offset = tl.load(stats_ptr + row * 2).to(ACC)
    rstd = tl.load(stats_ptr + row * 2 + 1).to(ACC)
    n_values = joined(count_hi, count_lo, ACC)
    if CHANNEL_SUMS:  # per channel: sum(dy * xhat), sum(dy); stored for the parameters
        n = row // G
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            dot = tl.zeros([BLOCK_K, BLOCK_P], ACC)
            total = tl.zeros([BLOCK_K, BLOCK_P], ACC)
            for p0 in range(0, P, BLOCK_P):
                p, at, ok = _tile(base, k, p0, K, P, BLOCK_P)
                xhat = (tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC) - x0 - offset) * rstd
                dy = tl.load(dy_ptr + at, mask=ok, other=0.0).to(ACC)
                dot += tl.where(ok, dy * xhat, 0.0)
                total += dy
            channel = n * G * K + g * K + k  # part is (2, N, C), C = G * K
            tl.store(part_ptr + channel, tl.sum(dot, 1), mask=k < K)
            tl.store(part_ptr + tl.num_programs(0) * K + channel, tl.sum(total, 1), mask=k < K)
    if NEED_DX:
        a, b = _row_sums(dy_ptr, x_ptr, w_ptr, base, g, x0, offset, rstd, K, P,
                         True, PER_CHANNEL, HAS_W, BLOCK_K, BLOCK_P, ACC)  # fmt: skip
        a = a / n_values
        b = b / n_values
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            for p0 in range(0, P, BLOCK_P):
                p, at, ok = _tile(base, k, p0, K, P, BLOCK_P)
                xhat = (tl.load(x_ptr + at, mask=ok, other=0.0).to(ACC) - x0 - offset) * rstd
                grad = tl.load(dy_ptr + at, mask=ok, other=0.0).to(ACC)
                if HAS_W:
                    grad *= _param(w_ptr, g, k, p, K, ok, PER_CHANNEL, 1.0, ACC)
                tl.store(dx_ptr + at, rstd * (grad - a - xhat * b), mask=ok)


@triton.jit
def _position_sums(dy_ptr, x_ptr, stats_ptr, part_ptr, R, D, rows,
                   BLOCK_P: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Layer norm's parameter gradients over split ``s`` of the rows, for a block of
    positions: ``part[s, 0] = sum(dy * xhat)``, ``part[s, 1] = sum(dy)``."""
    pb = tl.program_id(0)
    s = tl.program_id(1)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < D
    dot = tl.zeros([BLOCK_P], ACC)
    total = tl.zeros([BLOCK_P], ACC)
    for i in range(0, rows):
        r = s * rows + i
        ok = p_ok & (r < R)
        base = r.to(tl.int64) * D
        x0 = tl.load(x_ptr + base, mask=r < R, other=0.0).to(ACC)
        offset = tl.load(stats_ptr + r * 2, mask=r < R, other=0.0).to(ACC)
        rstd = tl.load(stats_ptr + r * 2 + 1, mask=r < R, other=0.0).to(ACC)
        x = tl.load(x_ptr + base + p, mask=ok, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + base + p, mask=ok, other=0.0).to(ACC)
        dot += tl.where(ok, dy * (x - x0 - offset) * rstd, 0.0)
        total += dy
    tl.store(part_ptr + s * 2 * D + p, dot, mask=p_ok)
    tl.store(part_ptr + s * 2 * D + D + p, total, mask=p_ok)


# ---------------------------------------------------------------------------------------------
# Launchers: the signatures of torch.ops.normlab.layer_norm_* and group_norm_*
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _blocks(channels: int, positions: int) -> tuple[int, int]:
    """``(BLOCK_K, BLOCK_P)``: a tile of up to ``TILE`` values, positions first."""
    block_p = min(triton.next_power_of_2(positions), TILE)
    return min(triton.next_power_of_2(channels), max(1, TILE // block_p)), block_p


def _forward_rows(input: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int,
                  channels: int, positions: int, per_channel: bool,
                  eps: float) -> tuple[Tensor, Tensor]:  # fmt: skip
    input = input.contiguous()
    rows = input.numel() // (channels * positions)
    out = torch.empty_like(input)
    stats = torch.empty((rows, 2), dtype=stat_dtype(input.dtype), device=input.device)
    block_k, block_p = _blocks(channels, positions)
    launch(
        _forward, (rows,), (groups, channels, positions, *dtypes(input, weight, bias)),
        (input, out, ptr(weight, stats), ptr(bias, stats), stats, groups, channels, positions,
         *halves(channels * positions), *halves(eps)),
        PER_CHANNEL=per_channel, HAS_W=weight is not None, HAS_B=bias is not None,
        BLOCK_K=block_k, BLOCK_P=block_p, ACC=acc_type(input.dtype),
    )  # fmt: skip
    return out, stats


def layer_norm_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, width: int, eps: float
) -> tuple[Tensor, Tensor]:
    """``(out, stats)``: each row of ``width`` values normalised; ``stats`` = (offset, rstd)."""
    return _forward_rows(input, weight, bias, 1, 1, width, False, eps)


def group_norm_forward(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float
) -> tuple[Tensor, Tensor]:
    """``(out, stats)`` of group norm of ``(N, C, *)``; ``stats`` per (sample, group)."""
    n, c = input.shape[0], input.shape[1]
    positions = input.numel() // (n * c)
    return _forward_rows(input, weight, bias, num_groups, c // num_groups, positions, True, eps)


@functools.lru_cache(maxsize=256)
def _position_split(rows: int, width: int, device: torch.device) -> tuple[int, int, int, int]:
    """``(BLOCK_P, position blocks, splits, rows per split)`` of layer norm's parameter
    gradients: blocks of positions, their rows split to give the GPU enough programs."""
    block_p = min(triton.next_power_of_2(width), TILE)
    position_blocks = triton.cdiv(width, block_p)
    splits = max(1, min(rows, triton.cdiv(programs(device), position_blocks)))
    per_split = triton.cdiv(rows, splits)
    return block_p, position_blocks, triton.cdiv(rows, per_split), per_split


def layer_norm_backward(
    grad_out: Tensor,
    input: Tensor,
    stats: Tensor,
    weight: Tensor | None,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dweight, dbias)`` (flat, or None where not needed) from the forward's stats."""
    grad_out, input = grad_out.contiguous(), input.contiguous()
    rows = stats.shape[0]
    width = input.numel() // rows
    acc = acc_type(input.dtype)
    dx = torch.empty_like(input) if need_input else None
    if need_input:
        block_k, block_p = _blocks(1, width)
        launch(
            _backward, (rows,), (width, *dtypes(grad_out, input, weight), False),
            (grad_out, input, dx, ptr(weight, stats), stats, stats, 1, 1, width,
             *halves(width)),
            NEED_DX=True, CHANNEL_SUMS=False, PER_CHANNEL=False,
            HAS_W=weight is not None, BLOCK_K=block_k, BLOCK_P=block_p, ACC=acc,
        )  # fmt: skip
    if not (need_weight or need_bias):
        return dx, None, None
    block_p, position_blocks, splits, per_split = _position_split(rows, width, input.device)
    part = torch.empty((splits, 2, width), dtype=stats.dtype, device=input.device)
    launch(
        _position_sums, (position_blocks, splits),
        (rows, width, per_split, *dtypes(grad_out, input)),
        (grad_out, input, stats, part, rows, width, per_split), BLOCK_P=block_p, ACC=acc,
    )  # fmt: skip
    sums = part.sum(0)
    return dx, sums[0] if need_weight else None, sums[1] if need_bias else None


def group_norm_backward(
    grad_out: Tensor,
    input: Tensor,
    stats: Tensor,
    weight: Tensor | None,
    num_groups: int,
    need_input: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dweight, dbias)`` (or None where not needed) from the forward's stats."""
    grad_out, input = grad_out.contiguous(), input.contiguous()
    n, c = input.shape[0], input.shape[1]
    positions = input.numel() // (n * c)
    channels = c // num_groups
    sums = need_weight or need_bias
    dx = torch.empty_like(input) if need_input else None
    part = torch.empty((2, n, c), dtype=stats.dtype, device=input.device) if sums else stats
    block_k, block_p = _blocks(channels, positions)
    launch(
        _backward, (n * num_groups,),
        (num_groups, channels, positions, *dtypes(grad_out, input, weight), need_input, sums),
        (grad_out, input, ptr(dx, stats), ptr(weight, stats), stats, part,
         num_groups, channels, positions, *halves(channels * positions)),
        NEED_DX=need_input, CHANNEL_SUMS=sums, PER_CHANNEL=True, HAS_W=weight is not None,
        BLOCK_K=block_k, BLOCK_P=block_p, ACC=acc_type(input.dtype),
    )  # fmt: skip
    if not sums:
        return dx, None, None
    totals = part.sum(1)
    return dx, totals[0] if need_weight else None, totals[1] if need_bias else None
