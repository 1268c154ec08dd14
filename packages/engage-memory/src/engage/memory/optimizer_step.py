"""Measuring what an optimizer step adds to memory, then putting parameters and optimizer state back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from engage.memory.meter import host_allocations
from engage.memory.probes import Probe


def _to_host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


@contextlib.contextmanager
def _restored(optimizers: Sequence[torch.optim.Optimizer]) -> Iterator[None]:
    """Parameters and optimizer state after the block are what they were before it (host copies in between)."""
    params = list(dict.fromkeys(p for opt in optimizers for g in opt.param_groups for p in g["params"]))
    with host_allocations():
        saved_params = [_to_host(p) for p in params]
        saved_state = [
            {
                p: {k: _to_host(v) if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
                for p in list(opt.state)
            }
            for opt in optimizers
        ]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, host in zip(params, saved_params):
                p.copy_(host)
            for opt, state in zip(optimizers, saved_state):
                for p in list(opt.state):
                    if p not in state:
                        del opt.state[p]  # created by the measured steps: frees its storage
                        continue
                    current = opt.state[p]
                    for k in list(current):
                        if k not in state[p]:
                            del current[k]
                    for k, v in state[p].items():
                        if isinstance(v, torch.Tensor) and isinstance(current.get(k), torch.Tensor):
                            current[k].copy_(v)
                        else:
                            current[k] = v


def measure_optimizer_step(optimizers: Sequence[torch.optim.Optimizer], probe: Probe) -> tuple[int, int]:
    """Bytes of optimizer state a first step creates, and the step's temporaries above the live bytes.

    Call it with gradients in place. Two steps run: the first creates the state (moments, step counters),
    the second shows the steady-state temporaries (for AdamW without ``foreach``, a parameter-sized buffer
    or two; with ``foreach``/``fused``, copies over whole groups). Parameters and state are restored
    afterwards, so training continues as if nothing ran.

    Examples:
        >>> import torch
        >>> from engage.memory.meter import MemoryMeter
        >>> lin = torch.nn.Linear(64, 64)
        >>> opt = torch.optim.AdamW(lin.parameters())
        >>> lin(torch.randn(8, 64)).sum().backward()
        >>> before = lin.weight.detach().clone()
        >>> with MemoryMeter(lin, opt) as meter:
        ...     state, temp = measure_optimizer_step([opt], Probe(torch.device("cpu"), meter))
        >>> state >= 2 * (64 * 64 + 64) * 4, torch.equal(lin.weight, before), len(opt.state)
        (True, True, 0)
    """
    with _restored(optimizers):
        start = probe.live()
        probe.reset_peak()
        for opt in optimizers:
            opt.step()
        state = probe.live() - start
        first_temp = probe.peak() - start - state
        steady = probe.live()
        probe.reset_peak()
        for opt in optimizers:
            opt.step()
        temp = max(probe.peak() - steady, first_temp, 0)
    return max(state, 0), temp
