"""The memory layer's fused CPU path: what ``memory_gather`` / ``memory_layer`` run on CPU tensors with
``backend="auto"`` (the Triton kernels need a GPU; ``backend="torch"`` still runs the oracle of ``naive.py``).

Every table row is a row of one flat matrix ``tables.view(K * S, d_out)``, so the forward is a single
``embedding_bag`` (``mode="sum"``, the scores as per-sample weights): one pass over the ``T x K`` gathered rows,
no ``[T, K, d_out]`` intermediate. The backward is three passes of the same kind:

* ``dscores``: the per-sample-weight gradient of that ``embedding_bag`` (one inner product per gathered row);
* ``dtables``: the transposed gather. The flat keys ``k * S + code`` are sorted (stable, int16 keys when they
  fit), so each table row's tokens form one segment, and a second ``embedding_bag`` sums ``score * dy`` over
  each segment's tokens into that row: rows no token hit come out zero, and the order of every sum is fixed
  (deterministic, no atomics);
* ``dx`` through the scores in closed form (the op README's formulas, ``sign(0) = 0``).

Arithmetic is float32 (float64 when an input is float64), as in the oracle.
"""

from __future__ import annotations

import torch

from .contract import compute_dtype


def _flat_keys(codes: torch.Tensor, rows: int) -> torch.Tensor:
    """``k * S + code`` for codes ``[T, K]``: the row of the flat ``[K * S, d_out]`` table, int64 ``[T, K]``."""
    offsets = torch.arange(codes.shape[1], device=codes.device, dtype=torch.int64) * rows
    return codes.to(torch.int64) + offsets


def _gather_forward(keys: torch.Tensor, scores: torch.Tensor, flat_tables: torch.Tensor):
    """``y [T, d_out]`` and what the backward needs (``offsets``, ``offset2bag``)."""
    tokens, per_token = keys.shape
    offsets = torch.arange(0, tokens * per_token, per_token, device=keys.device, dtype=torch.int64)
    y, offset2bag, _, _ = torch.ops.aten._embedding_bag(
        flat_tables, keys.reshape(-1), offsets, False, 0, False, scores.reshape(-1).to(flat_tables.dtype)
    )
    return y, offsets, offset2bag


def _scores_grad(dy, flat_tables, keys, offsets, offset2bag) -> torch.Tensor:
    """``dscores [T, K]``: ``<dy_t, tables[k, code_tk]>`` for every gathered row."""
    grad = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        dy, flat_tables, keys.reshape(-1), offsets, offset2bag, 0
    )
    return grad.view(keys.shape)


def _tables_grad(dy: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor, table_rows: int) -> torch.Tensor:
    """``dtables [K * S, d_out]``: row r sums ``score * dy`` over the tokens whose key is r (sorted segments)."""
    per_token = keys.shape[1]
    flat = keys.reshape(-1)
    sort_keys = flat.to(torch.int16) if table_rows <= torch.iinfo(torch.int16).max else flat.to(torch.int32)
    _, order = torch.sort(sort_keys, stable=True)
    counts = torch.bincount(flat, minlength=table_rows)
    starts = torch.cumsum(counts, 0) - counts
    token_of = torch.div(order, per_token, rounding_mode="floor")
    weights = scores.reshape(-1)[order].to(dy.dtype)
    return torch.nn.functional.embedding_bag(token_of, dy, starts, mode="sum", per_sample_weights=weights)


def _hash(z: torch.Tensor, inv_temperature: float, magnitude: bool):
    """Codes int64 ``[T, K]``, scores ``[T, K]`` and the sigmoids ``s [T, K, tau]`` of chunks ``z [T, K, tau]``."""
    tau = z.shape[-1]
    bit_values = 2 ** torch.arange(tau - 1, -1, -1, device=z.device, dtype=torch.int64)
    codes = ((z >= 0).to(torch.int64) * bit_values).sum(-1)
    s = torch.sigmoid(z.abs() * (2.0 * inv_temperature))
    scores = s.prod(-1)
    if magnitude:
        scores = scores * z.abs().sum(-1)
    return codes, scores, s


def _hash_grad(dscores, z, s, inv_temperature: float, magnitude: bool) -> torch.Tensor:
    """``dz [T, K, tau]`` from ``dscores [T, K]`` (the op README's formulas; codes carry no gradient)."""
    prod = s.prod(-1, keepdim=True)
    slope = (1.0 - s) * (2.0 * inv_temperature)
    if magnitude:
        local = prod * (1.0 + z.abs().sum(-1, keepdim=True) * slope)
    else:
        local = prod * slope
    return dscores[..., None] * torch.sign(z) * local


class _CPUGather(torch.autograd.Function):
    """``memory_gather`` on CPU: differentiable in scores, tables and bias."""

    @staticmethod
    def forward(ctx, codes, scores, tables, bias):
        dtype = compute_dtype(scores, tables, bias)
        num_tables, rows, d_out = tables.shape
        keys = _flat_keys(codes, rows)
        flat_tables = tables.to(dtype).reshape(num_tables * rows, d_out)
        scores = scores.to(dtype)
        y, offsets, offset2bag = _gather_forward(keys, scores, flat_tables)
        if bias is not None:
            y = y + bias.to(dtype)
        ctx.save_for_backward(keys, scores, flat_tables, offsets, offset2bag)
        ctx.dtypes = (scores.dtype, tables.dtype, None if bias is None else bias.dtype)
        ctx.shape = tables.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        keys, scores, flat_tables, offsets, offset2bag = ctx.saved_tensors
        need_scores, need_tables, need_bias = ctx.needs_input_grad[1:4]
        dy = dy.to(flat_tables.dtype).contiguous()
        dscores = _scores_grad(dy, flat_tables, keys, offsets, offset2bag) if need_scores else None
        dtables = (_tables_grad(dy, keys, scores, flat_tables.shape[0]).view(ctx.shape).to(ctx.dtypes[1])
                   if need_tables else None)
        dbias = dy.sum(0).to(ctx.dtypes[2]) if need_bias else None
        return None, dscores, dtables, dbias


class _CPULayer(torch.autograd.Function):
    """``memory_layer`` on CPU: hash, gather, weight, sum; differentiable in x, tables and bias."""

    @staticmethod
    def forward(ctx, x2d, tables, bias, inv_temperature, magnitude):
        dtype = compute_dtype(x2d, tables, bias)
        num_tables, rows, d_out = tables.shape
        tau = rows.bit_length() - 1
        z = x2d.to(dtype).reshape(x2d.shape[0], num_tables, tau)
        codes, scores, s = _hash(z, inv_temperature, magnitude)
        keys = _flat_keys(codes, rows)
        flat_tables = tables.to(dtype).reshape(num_tables * rows, d_out)
        y, offsets, offset2bag = _gather_forward(keys, scores, flat_tables)
        if bias is not None:
            y = y + bias.to(dtype)
        ctx.save_for_backward(z, s, keys, scores, flat_tables, offsets, offset2bag)
        ctx.layer = (inv_temperature, magnitude)
        ctx.dtypes = (x2d.dtype, tables.dtype, None if bias is None else bias.dtype)
        ctx.shape = tables.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        z, s, keys, scores, flat_tables, offsets, offset2bag = ctx.saved_tensors
        need_x, need_tables, need_bias = ctx.needs_input_grad[:3]
        dy = dy.to(flat_tables.dtype).contiguous()
        dx = None
        if need_x:
            dscores = _scores_grad(dy, flat_tables, keys, offsets, offset2bag)
            dx = _hash_grad(dscores, z, s, *ctx.layer).reshape(z.shape[0], -1).to(ctx.dtypes[0])
        dtables = (_tables_grad(dy, keys, scores, flat_tables.shape[0]).view(ctx.shape).to(ctx.dtypes[1])
                   if need_tables else None)
        dbias = dy.sum(0).to(ctx.dtypes[2]) if need_bias else None
        return dx, dtables, dbias, None, None


def memory_gather_cpu(codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``y [T, d_out]`` (compute dtype) from codes and scores ``[T, K]``, tables ``[K, S, d_out]``."""
    return _CPUGather.apply(codes, scores, tables, bias)


def memory_layer_cpu(x2d: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None,
                     inv_temperature: float, magnitude: bool) -> torch.Tensor:
    """``y [T, d_out]`` (compute dtype) from ``x2d [T, K * tau]``, tables ``[K, 2^tau, d_out]``."""
    return _CPULayer.apply(x2d, tables, bias, inv_temperature, magnitude)
