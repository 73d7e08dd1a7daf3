"""Grouped scaled weight standardization: Triton forward and backward for a whole list of
weights, one program per row (output channel) of any weight.

Rows are launched by block size: each weight's rows go to the launch whose BLOCK is the power of
two at or above its row length (capped at 4096, as the per-layer kernels: ws.py), so a 27-element
stem row is not read by a 4096-wide vector. One launch per distinct block size (ResNet-50: at most
eight per pass); each program reads its row's number from its launch's row list.

The weights stay where they are (parameters): a per-weight table holds each one's address,
its gain's address, its row length, its first row and its offset in the flat output, and a
per-row table names each row's weight. The tables are built on the host once per group of
addresses and copied to the device without a sync (pinned memory); parameter addresses are
stable, so a steady-state step only looks them up. Each row is read in its weight's memory
order (row-dense weights: see fastnofrost/ops/ws_grouped.py). An empty gain tensor: no gain.
The backward reads each weight's gradient at its own address (a per-call table), in its dtype.
The row math is the per-layer kernels' (ws.py: ws_row_forward / ws_row_backward).
"""
import torch
import triton
import triton.language as tl

from .ws import row_block, ws_row_backward, ws_row_forward

_FIELDS = 5  # weight address, gain address, row length, first row, offset in the flat buffer


@triton.jit
def _row(META, FMETA, ROW_LAYER, row, DT: tl.constexpr, ACC: tl.constexpr):
    layer = tl.load(ROW_LAYER + row).to(tl.int64)
    w = tl.load(META + layer * 5).to(tl.pointer_type(DT))
    gain_ptr = tl.load(META + layer * 5 + 1).to(tl.pointer_type(DT))
    n = tl.load(META + layer * 5 + 2)
    local = row - tl.load(META + layer * 5 + 3)
    offset = tl.load(META + layer * 5 + 4) + local * n
    gain = tl.load(gain_ptr + local).to(ACC)
    scale = tl.load(FMETA + layer * 2).to(ACC)
    eps = tl.load(FMETA + layer * 2 + 1).to(ACC)
    return w + local * n, n, offset, gain, scale, eps


@triton.jit
def _fwd_kernel(META, FMETA, ROW_LAYER, ROWS, OUT, MEAN, RSTD, DT: tl.constexpr, ACC: tl.constexpr,
                BLOCK: tl.constexpr):
    row = tl.load(ROWS + tl.program_id(0)).to(tl.int64)
    w, n, offset, gain, scale, eps = _row(META, FMETA, ROW_LAYER, row, DT, ACC)
    mean, rstd = ws_row_forward(w, OUT + offset, n, gain, scale, eps, ACC, BLOCK)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _bwd_kernel(META, FMETA, ROW_LAYER, ROWS, GRADS, MEAN, RSTD, DW, DGAIN, DT: tl.constexpr, GDT: tl.constexpr,
                ACC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.load(ROWS + tl.program_id(0)).to(tl.int64)
    w, n, offset, gain, scale, _eps = _row(META, FMETA, ROW_LAYER, row, DT, ACC)
    layer = tl.load(ROW_LAYER + row).to(tl.int64)
    local = row - tl.load(META + layer * 5 + 3)
    g = tl.load(GRADS + layer).to(tl.pointer_type(GDT)) + local * n  # this weight's gradient, where it lies
    mean = tl.load(MEAN + row).to(ACC)
    rstd = tl.load(RSTD + row).to(ACC)
    tl.store(DGAIN + row, ws_row_backward(g, w, DW + offset, n, mean, rstd, gain, scale, ACC, BLOCK))


_TL = {torch.float64: tl.float64, torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_tables: dict = {}  # key (addresses, lengths, scales, eps) -> device tables; a model has one or two keys


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # pinned: the copy is queued, the host does not wait
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _group(weights, gains, scales, eps):
    """(meta, fmeta, row_layer, launches, rows, total, ones) for this list, built once per key;
    ``launches``: [(BLOCK, the rows of that block size as a device tensor, their count)]."""
    key = (tuple(w.data_ptr() for w in weights), tuple(g.data_ptr() if g.numel() else 0 for g in gains),
           tuple(w.numel() for w in weights), tuple(w.shape[0] for w in weights), tuple(scales), tuple(eps))
    hit = _tables.get(key)
    if hit is not None:
        return hit
    device, dtype = weights[0].device, weights[0].dtype
    rows = [w.shape[0] for w in weights]
    ones = torch.ones(max(rows), dtype=dtype, device=device)  # the gain of a weight that has none
    meta, first, offset = [], 0, 0
    for w, g, r in zip(weights, gains, rows):
        meta.append([w.data_ptr(), (g if g.numel() else ones).data_ptr(), w.numel() // r, first, offset])
        first, offset = first + r, offset + w.numel()
    row_layer = torch.repeat_interleave(torch.arange(len(weights), dtype=torch.int32), torch.tensor(rows))
    by_block = {}
    for (_, _, n, start, _), r in zip(meta, rows):
        by_block.setdefault(row_block(n), []).append(torch.arange(start, start + r, dtype=torch.int32))
    launches = [(block, _to_device(torch.cat(parts), device), sum(len(p) for p in parts))
                for block, parts in sorted(by_block.items())]
    hit = (_to_device(torch.tensor(meta, dtype=torch.int64), device),
           _to_device(torch.tensor([[s, e] for s, e in zip(scales, eps)], dtype=torch.float64), device),
           _to_device(row_layer, device), launches, first, offset, ones)
    if len(_tables) > 8:  # stale groups (a model moved or rebuilt): drop them
        _tables.clear()
    _tables[key] = hit
    return hit


def _acc(dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def forward(weights, gains, scales, eps):
    meta, fmeta, row_layer, launches, rows, total, _ = _group(weights, gains, scales, eps)
    first = weights[0]
    acc, stat = _acc(first.dtype)
    out = torch.empty(total, dtype=first.dtype, device=first.device)
    mean = torch.empty(rows, dtype=stat, device=first.device)
    rstd = torch.empty(rows, dtype=stat, device=first.device)
    for block, ids, count in launches:
        _fwd_kernel[(count,)](meta, fmeta, row_layer, ids, out, mean, rstd, DT=_TL[first.dtype], ACC=acc,
                              BLOCK=block)
    return out, mean, rstd


def backward(grads, weights, gains, mean, rstd, scales):
    """``grads``: one per weight, all of one dtype, each in its weight's memory order (the
    caller's check); their addresses change every step, so their table is built per call (one
    pinned, queued copy: no sync)."""
    meta, fmeta, row_layer, launches, rows, total, _ = _group(weights, gains, scales, [1.0] * len(weights))
    first = weights[0]
    acc, stat = _acc(first.dtype)
    table = _to_device(torch.tensor([g.data_ptr() for g in grads], dtype=torch.int64), first.device)
    dw = torch.empty(total, dtype=first.dtype, device=first.device)
    dgain = torch.empty(rows, dtype=stat, device=first.device)
    mean, rstd = mean.contiguous(), rstd.contiguous()
    for block, ids, count in launches:
        _bwd_kernel[(count,)](meta, fmeta, row_layer, ids, table, mean, rstd, dw, dgain, DT=_TL[first.dtype],
                              GDT=_TL[grads[0].dtype], ACC=acc, BLOCK=block)
    return dw, dgain
