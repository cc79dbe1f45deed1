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

import functools

import torch

from ..dispatch import needs_grad
from .contract import compute_dtype


@functools.lru_cache(maxsize=64)
def _constants(num_tables: int, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bit values [tau], table offsets k * S [K])``, int64, made once per shape: a decode step of one token
    costs about as much per small tensor it creates as per row it gathers."""
    tau = rows.bit_length() - 1
    bits = 2 ** torch.arange(tau - 1, -1, -1, device=device, dtype=torch.int64)
    return bits, torch.arange(num_tables, device=device, dtype=torch.int64) * rows


def _flat_keys(codes: torch.Tensor, rows: int) -> torch.Tensor:
    """``k * S + code`` for codes ``[T, K]``: the row of the flat ``[K * S, d_out]`` table, int64 ``[T, K]``."""
    return codes.to(torch.int64) + _constants(codes.shape[1], rows, codes.device)[1]


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
    """Codes int64 ``[T, K]``, scores ``[T, K]``, the sigmoids ``s [T, K, tau]`` and their product ``[T, K]`` of
    chunks ``z [T, K, tau]``."""
    bit_values = _constants(z.shape[1], 1 << z.shape[-1], z.device)[0]
    codes = ((z >= 0) * bit_values).sum(-1)
    s = torch.sigmoid(z.abs() * (2.0 * inv_temperature))
    prod = s.prod(-1)
    scores = prod * z.abs().sum(-1) if magnitude else prod
    return codes, scores, s, prod


def _hash_grad(dscores, z, s, prod, inv_temperature: float, magnitude: bool) -> torch.Tensor:
    """``dz [T, K, tau]`` from ``dscores [T, K]`` (the op README's formulas; codes carry no gradient). The
    per-chunk factors multiply first, on ``[T, K]``: two fewer passes over ``[T, K, tau]``."""
    scale = (dscores * prod)[..., None]
    slope_sign = torch.sign(z) * (1.0 - s)
    if magnitude:
        return scale * (torch.sign(z) + (z.abs().sum(-1, keepdim=True) * (2.0 * inv_temperature)) * slope_sign)
    return (scale * (2.0 * inv_temperature)) * slope_sign


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
        codes, scores, s, prod = _hash(z, inv_temperature, magnitude)
        keys = _flat_keys(codes, rows)
        flat_tables = tables.to(dtype).reshape(num_tables * rows, d_out)
        y, offsets, offset2bag = _gather_forward(keys, scores, flat_tables)
        if bias is not None:
            y = y + bias.to(dtype)
        ctx.save_for_backward(z, s, prod, keys, scores, flat_tables, offsets, offset2bag)
        ctx.layer = (inv_temperature, magnitude)
        ctx.dtypes = (x2d.dtype, tables.dtype, None if bias is None else bias.dtype)
        ctx.shape = tables.shape
        return y

    @staticmethod
    def backward(ctx, dy):
        z, s, prod, keys, scores, flat_tables, offsets, offset2bag = ctx.saved_tensors
        need_x, need_tables, need_bias = ctx.needs_input_grad[:3]
        dy = dy.to(flat_tables.dtype).contiguous()
        dx = None
        if need_x:
            dscores = _scores_grad(dy, flat_tables, keys, offsets, offset2bag)
            dx = _hash_grad(dscores, z, s, prod, *ctx.layer).reshape(z.shape[0], -1).to(ctx.dtypes[0])
        dtables = (_tables_grad(dy, keys, scores, flat_tables.shape[0]).view(ctx.shape).to(ctx.dtypes[1])
                   if need_tables else None)
        dbias = dy.sum(0).to(ctx.dtypes[2]) if need_bias else None
        return dx, dtables, dbias, None, None


@functools.lru_cache(maxsize=64)
def _bag_offsets(tokens: int, per_token: int, device: torch.device) -> torch.Tensor:
    """Where each token's bag of ``per_token`` keys starts in the flat key list."""
    return torch.arange(0, tokens * per_token, per_token, device=device, dtype=torch.int64)


def _gather_only(keys: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor:
    """The forward alone (no autograd): one ``embedding_bag`` over the flat tables, plus the bias. Called straight
    (``torch.embedding_bag``): ``F.embedding_bag``'s argument checks cost as much as a one-token gather."""
    num_tables, rows, d_out = tables.shape
    flat_tables = (tables if tables.dtype == dtype else tables.to(dtype)).reshape(num_tables * rows, d_out)
    offsets = _bag_offsets(keys.shape[0], keys.shape[1], keys.device)
    scores = scores if scores.dtype == dtype else scores.to(dtype)
    y = torch.embedding_bag(flat_tables, keys.reshape(-1), offsets, False, 0, False, scores.reshape(-1))[0]
    return y if bias is None else y + (bias if bias.dtype == dtype else bias.to(dtype))


def memory_gather_cpu(codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``y [T, d_out]`` (compute dtype) from codes and scores ``[T, K]``, tables ``[K, S, d_out]``."""
    if not needs_grad(scores, tables, bias):
        dtype = compute_dtype(scores, tables, bias)
        return _gather_only(_flat_keys(codes, tables.shape[1]), scores, tables, bias, dtype)
    return _CPUGather.apply(codes, scores, tables, bias)


def memory_layer_cpu(x2d: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None,
                     inv_temperature: float, magnitude: bool) -> torch.Tensor:
    """``y [T, d_out]`` (compute dtype) from ``x2d [T, K * tau]``, tables ``[K, 2^tau, d_out]``."""
    if not needs_grad(x2d, tables, bias):
        dtype = compute_dtype(x2d, tables, bias)
        num_tables, rows, _ = tables.shape
        z = (x2d if x2d.dtype == dtype else x2d.to(dtype)).reshape(x2d.shape[0], num_tables, rows.bit_length() - 1)
        codes, scores, _, _ = _hash(z, inv_temperature, magnitude)
        return _gather_only(codes + _constants(num_tables, rows, z.device)[1], scores, tables, bias, dtype)
    return _CPULayer.apply(x2d, tables, bias, inv_temperature, magnitude)
