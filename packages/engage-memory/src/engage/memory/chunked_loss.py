"""Cross-entropy over a large vocabulary without ever holding the whole (rows, vocabulary) logits."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _chunk_loss(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    # Summed in float32 whatever the autocast dtype, as a full-precision cross-entropy would be.
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Linear | torch.Tensor,
    targets: torch.Tensor,
    chunks: int = 8,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``targets``, computed ``chunks`` rows at a time.

    Each chunk of rows runs under a non-reentrant checkpoint: its logits are freed as soon as its loss
    is known and recomputed in backward, one chunk at a time. The output layer's activation memory drops
    from ``rows * vocabulary`` to ``rows * vocabulary / chunks`` (times the logits' bytes, usually several
    times over for the softmax and its gradient), for one more matmul with the output layer in backward.
    Gradients equal those of ``F.cross_entropy(head(hidden).flatten(0, -2), targets.flatten())`` up to
    summation order. ``chunks=1`` computes it in one piece (no checkpoint).

    Args:
        hidden: ``(..., D)`` inputs of the output layer (for a language model, the final normalised states).
        head: the output ``nn.Linear`` (``D`` to vocabulary), or its ``(V, D)`` weight.
        targets: class indices with ``hidden``'s leading shape.
        chunks: number of row chunks (at least 1).
        ignore_index: targets equal to this do not count, as in ``F.cross_entropy``.

    Examples:
        >>> import torch
        >>> head = torch.nn.Linear(16, 1000, bias=False)
        >>> hidden = torch.randn(4, 32, 16, requires_grad=True)
        >>> targets = torch.randint(0, 1000, (4, 32))
        >>> loss = chunked_cross_entropy(hidden, head, targets, chunks=4)
        >>> full = torch.nn.functional.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
        >>> torch.allclose(loss, full, atol=1e-5)
        True
    """
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks={chunks!r} must be a positive int (8 suits most vocabularies; 1 means no chunking)")
    weight, bias = (head.weight, head.bias) if isinstance(head, nn.Module) else (head, None)
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"hidden has width {hidden.shape[-1]} but the head expects {weight.shape[-1]}; "
            "pass the states that feed the output layer"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but hidden's leading shape is {tuple(hidden.shape[:-1])}; "
            "give one class index per row of hidden"
        )
    rows = hidden.reshape(-1, hidden.shape[-1])
    labels = targets.reshape(-1)
    count = (labels != ignore_index).sum().clamp_min(1)
    if chunks == 1 or not torch.is_grad_enabled():
        total = _chunk_loss(rows, weight, bias, labels, ignore_index)
    else:
        parts = [
            checkpoint(_chunk_loss, h, weight, bias, t, ignore_index, use_reentrant=False)
            for h, t in zip(rows.chunk(chunks), labels.chunk(chunks))
        ]
        total = torch.stack(parts).sum()
    return total / count


def loss_chunks(module: Any) -> int:
    """How many chunks the module's trainer strategy asks the loss to use: 1 unless ``chunked_loss=True``.

    A LightningModule opts in to the chunked loss of :class:`~engage.memory.MemoryPlanningStrategy` by
    computing its loss through :func:`chunked_cross_entropy` with this many chunks; under any other
    strategy (or without a trainer) it gets 1, the plain loss.

    Examples:
        >>> import torch
        >>> loss_chunks(torch.nn.Linear(2, 2))
        1
    """
    try:
        strategy = module.trainer.strategy
    except (AttributeError, RuntimeError):  # not attached to a Trainer
        return 1
    return int(getattr(strategy, "loss_chunks", 1)) if getattr(strategy, "chunked_loss", False) else 1
