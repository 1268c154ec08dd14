"""Simulators that are programs in any language: ``ExecutableSimulator``.

A program that speaks the wire protocol (``docs/protocol.md``) is a simulator with no Python
subclass: declare its command line, its parameters and its samples, and the trainer starts it
for each simulation, as it starts Python simulators. Held-out validation runs it the same way,
and :meth:`ExecutableSimulator.simulate` runs it through the same engine in this process (for
offline data sets and the conformance suite).

Example (the wave program ships with ENGAGE and imports only pyzmq and numpy)::

    >>> sim = ExecutableSimulator.travelling_wave(steps=3)
    >>> [sample.shape for sample in sim.run({"frequency": 1.0, "damping": 0.1})]
    [(16, 16), (16, 16), (16, 16)]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace

#: the placeholders of an argv template, filled for each simulation
PLACEHOLDERS = ("address", "simulation_id", "attempt")

#: the example program: a damped travelling wave on a 16x16 grid (``simulator=command``'s default)
TRAVELLING_WAVE = str(Path(__file__).parent / "examples" / "travelling_wave.py")
TRAVELLING_WAVE_SPACE = {"frequency": {"low": 0.5, "high": 2.0}, "damping": {"low": 0.0, "high": 0.5}}


class ExecutableSimulator(Simulator):
    """A program that speaks the wire protocol, started once per simulation.

    ``argv`` is its command line, with ``{address}``, ``{simulation_id}`` and ``{attempt}``
    filled in for each simulation (the address is required: the program connects to it; the id
    and attempt name its ``HELLO``). The first word is found on ``PATH`` unless it is a path.
    ``parameters`` is a parameter-space config (as :meth:`ParameterSpace.from_config` takes);
    every sample has ``sample_shape`` and ``dtype``, and a run sends ``samples_per_run``.
    ``env`` adds environment variables; ``cwd`` is the program's working directory.
    """

    def __init__(
        self,
        argv: Sequence[str],
        parameters: Mapping[str, Any],
        sample_shape: Sequence[int],
        samples_per_run: int,
        dtype: str = "float32",
        value_range: Sequence[float] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ):
        argv = [str(a) for a in argv]
        if not argv:
            raise ValueError("simulator.argv: empty; give the program and its arguments, e.g. [./sim, '{address}']")
        if not any("{address}" in a for a in argv):
            raise ValueError("simulator.argv: no '{address}' placeholder; the program must be told where to connect")
        for arg in argv:
            try:
                arg.format(address="", simulation_id=0, attempt=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"simulator.argv: {arg!r} has an unknown or malformed placeholder ({exc}); "
                    f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)} and double braces for literal ones"
                ) from None
        program = argv[0]
        found = program if os.sep in program else shutil.which(program)
        if found is None or not os.path.isfile(found):
            raise ValueError(f"simulator.argv: program {program!r} not found; give a path or a program on PATH")
        if os.sep in program and not os.access(found, os.X_OK):
            raise ValueError(
                f"simulator.argv: {program!r} is not executable; chmod +x it or run it through its interpreter"
            )
        if int(samples_per_run) < 1:
            raise ValueError(f"simulator.samples_per_run: must be >= 1, got {samples_per_run}")
        shape = tuple(int(n) for n in sample_shape)
        if not shape or len(shape) > 4 or min(shape) < 1:
            raise ValueError(f"simulator.sample_shape: 1 to 4 positive sizes, got {list(sample_shape)}")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"simulator.dtype: {dtype!r} is not a numpy dtype; e.g. float32") from None
        if cwd is not None and not os.path.isdir(cwd):
            raise ValueError(f"simulator.cwd: {cwd!r} is not a folder")
        self.argv, self.env, self.cwd = argv, dict(env or {}), cwd
        self.space = ParameterSpace.from_config(dict(parameters))
        self.sample_shape = shape
        self.samples_per_run = int(samples_per_run)
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))

    @classmethod
    def travelling_wave(cls, steps: int = 20) -> ExecutableSimulator:
        """The example program that ships with ENGAGE (``simulator=command``'s default)."""
        return cls(
            [sys.executable, TRAVELLING_WAVE, "{address}", "{simulation_id}", "{attempt}", str(steps)],
            TRAVELLING_WAVE_SPACE,
            sample_shape=(16, 16),
            samples_per_run=steps,
            value_range=(-1.0, 1.0),
        )

    def launch_command(self, address: str, simulation_id: int, attempt: int) -> list[str]:
        """The program's command line for one simulation."""
        command = [a.format(address=address, simulation_id=simulation_id, attempt=attempt) for a in self.argv]
        if not self.env and self.cwd is None:
            return command
        # the executor starts argv as it is: env and cwd travel through env(1) and a shell-free cd
        prefix = ["env", *(f"{k}={v}" for k, v in self.env.items())]
        if self.cwd is not None:
            prefix += ["-C", self.cwd]
        return [*prefix, *command]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "argv": self.argv}

    def simulate(self, parameters: np.ndarray) -> Iterator[np.ndarray]:
        """One run of the program, received in this process by the online engine itself."""
        from engage.core.online.buffer import TrainingBuffer
        from engage.core.online.scheduler import SimulationScheduler
        from engage.core.online.validation import HeldOutPoints

        steps = self.samples_per_run
        buffer = TrainingBuffer(capacity=max(1, min(steps, 1024)), policy="fifo", max_reads=1)
        with tempfile.TemporaryDirectory(prefix="engage-executable-") as workdir:
            scheduler = SimulationScheduler(
                self, HeldOutPoints(self.space, parameters[None, :]), buffer, simulations=1, retries=0,
                shared_memory=False, workdir=workdir,
            )  # fmt: skip
            scheduler.start()
            try:
                while (batch := buffer.get_batch(1)) is not None:
                    yield batch["target"][0].copy()
            finally:
                scheduler.stop()
            if scheduler.error or scheduler.finished != 1:
                raise RuntimeError(f"{self.argv[0]} did not complete its run ({scheduler.error or 'it failed'})")
