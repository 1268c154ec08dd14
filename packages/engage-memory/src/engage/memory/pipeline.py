"""Pipeline stages over several devices with ``torch.distributed.pipelining``, split by measured memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe


def split_stages(sizes: Sequence[float], num_stages: int) -> list[list[int]]:
    """Contiguous groups of blocks, one per stage, minimising the largest group's total ``sizes``.

    ``sizes`` are per-block memory figures (for instance ``fwd_delta`` of the chosen decisions in a
    :class:`~engage.memory.Profile`), so that each device holds about the same activations.

    Examples:
        >>> split_stages([4, 1, 1, 1, 1], 2)
        [[0], [1, 2, 3, 4]]
    """
    n = len(sizes)
    if not 1 <= num_stages <= n:
        raise ValueError(f"num_stages={num_stages} must lie between 1 and the number of blocks ({n})")
    prefix = [0.0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    # best[k][i]: smallest largest-stage total when the first i blocks form k stages.
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for k in range(1, num_stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    groups, i = [], n
    for k in range(num_stages, 0, -1):
        j = cut[k][i]
        groups.append(list(range(j, i)))
        i = j
    return groups[::-1]


def pipeline_schedule(
    stage_module: nn.Module,
    stage_index: int,
    num_stages: int,
    device: torch.device,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    group: torch.distributed.ProcessGroup | None = None,
) -> ScheduleGPipe:
    """A GPipe schedule for this rank's stage (the process group must be initialised).

    The first stage calls ``schedule.step(inputs)``, the last ``schedule.step(target=..., losses=[])``;
    gradients are averaged over micro-batches, so they equal one step on the whole batch with a mean loss.

    Example (run on every rank of a 2-process group)::

        stage = nn.Sequential(*[blocks[i] for i in split_stages(sizes, 2)[rank]])
        schedule = pipeline_schedule(stage, rank, 2, torch.device("cpu"), 4, loss_fn=F.mse_loss)
    """
    stage = PipelineStage(stage_module, stage_index, num_stages, device, group=group)
    return ScheduleGPipe(stage, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=True)
