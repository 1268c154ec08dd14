"""Simulators that are programs in any language: ``ExecutableSimulator``.

A program that speaks the wire protocol (``docs/protocol.md``) is a simulator with no Python
subclass: declare its command line, its parameters and its samples, and the trainer starts it
for each simulation, as it starts Python simulators. Held-out validation runs it the same way,
and :meth:`ExecutableSimulator.simulate` runs it through the same engine in this process (for
offline data sets and the conformance suite).

Example (the wave program ships with ENGAGE and imports only pyzmq and numpy)::

    >>> import sys
    >>> sim = ExecutableSimulator(
    ...     [sys.executable, TRAVELLING_WAVE, "{address}", "{simulation_id}", "{attempt}", "3"],
    ...     parameters={"frequency": {"low": 0.5, "high": 2.0}, "damping": {"low": 0.0, "high": 0.5}},
    ...     sample_shape=(16, 16),
    ...     samples_per_run=3,
    ... )
    >>> [sample.shape for sample in sim.run({"frequency": 1.0, "damping": 0.1})]
    [(16, 16), (16, 16), (16, 16)]
    >>> sim.launch_command("tcp://127.0.0.1:5555", 7, 1)[2:]
    ['tcp://127.0.0.1:5555', '7', '1', '3']
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engage.core.online.protocol import ProtocolError, dtype_code
from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace

#: the placeholders of an argv template, filled for each simulation; all three are required, as
#: the program connects to the address and names the simulation and attempt in its ``HELLO``
PLACEHOLDERS = ("address", "simulation_id", "attempt")

#: the example program: a damped travelling wave on a 16x16 grid (``simulator=command``'s default)
TRAVELLING_WAVE = str(Path(__file__).parent / "examples" / "travelling_wave.py")
TRAVELLING_WAVE_SPACE = {"frequency": {"low": 0.5, "high": 2.0}, "damping": {"low": 0.0, "high": 0.5}}

#: how the program is started in another working directory: POSIX sh changes to ``$0`` and
#: replaces itself with the program, whose words reach it untouched (no shell parsing)
_IN_FOLDER = 'cd -- "$0" && exec "$@"'


class ExecutableSimulatorError(ValueError):
    """An argument of :class:`ExecutableSimulator` that cannot work; ``field`` names it and the
    message says the fix (``simulator.<field>: ...``, as ``engage run`` spells the key)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"simulator.{field}: {reason}")
        self.field, self.reason = field, reason


def travelling_wave_arguments(steps: int = 20) -> dict[str, Any]:
    """The arguments of :class:`ExecutableSimulator` for the example wave program, ``steps``
    samples a run (``simulator=command``'s defaults)."""
    return {
        "argv": [sys.executable, TRAVELLING_WAVE, "{address}", "{simulation_id}", "{attempt}", str(steps)],
        "parameters": {name: dict(spec) for name, spec in TRAVELLING_WAVE_SPACE.items()},
        "sample_shape": [16, 16],
        "samples_per_run": steps,
        "dtype": "float32",
        "value_range": [-1.0, 1.0],
    }


@dataclass(frozen=True)
class CheckedArguments:
    """What :func:`check_arguments` made of the arguments, ready to use."""

    argv: list[str]
    program: str
    space: ParameterSpace
    sample_shape: tuple[int, ...]
    samples_per_run: int | None
    dtype: np.dtype
    value_range: tuple[float, float] | None
    env: dict[str, str]
    cwd: str | None


def _check_argv(argv: Sequence[Any], env: Mapping[str, str], cwd: str | None) -> tuple[list[str], str]:
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise ExecutableSimulatorError(
            "argv", f"must be a list of words, e.g. ['./sim', '{{address}}', ...], got {type(argv).__name__} {argv!r}"
        )
    words = []
    for word in argv:
        if not isinstance(word, (str, int, float, os.PathLike)) or isinstance(word, bool):
            raise ExecutableSimulatorError("argv", f"{word!r} is not a word of a command line; give strings")
        words.append(os.fspath(word) if isinstance(word, os.PathLike) else str(word))
    if not words or not words[0]:
        raise ExecutableSimulatorError("argv", "empty; give the program and its arguments, e.g. ['./sim', '{address}']")
    for word in words:
        try:
            word.format(address="", simulation_id=0, attempt=1)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ExecutableSimulatorError(
                "argv",
                f"{word!r} has an unknown or malformed placeholder ({exc}); use "
                f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)} and double braces for literal ones",
            ) from None
    for name in PLACEHOLDERS:
        if not any("{" + name in word.replace("{{", "") for word in words):
            raise ExecutableSimulatorError(
                "argv",
                f"no '{{{name}}}' placeholder; the program connects to {{address}} and names "
                "{simulation_id} and {attempt} in its HELLO, so its command line must carry all three",
            )
    program = words[0]
    if os.sep in program or (os.altsep and os.altsep in program):
        found: str | None = os.path.join(cwd or os.getcwd(), os.path.expanduser(program))
        where = f"(relative to {cwd})" if cwd else "(relative to the current folder)"
    else:
        found = shutil.which(program, path=env.get("PATH", os.environ.get("PATH", os.defpath)))
        where = "on PATH"
    if found is None or not os.path.isfile(found):
        raise ExecutableSimulatorError(
            "argv", f"program {program!r} not found {where}; give a path or a program on PATH"
        )
    if not os.access(found, os.X_OK):
        raise ExecutableSimulatorError(
            "argv", f"{program!r} is not executable; chmod +x it or start it through its interpreter"
        )
    return words, os.path.abspath(found)


def check_arguments(
    argv: Sequence[Any],
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    sample_shape: Sequence[int],
    samples_per_run: int | None,
    dtype: str | np.dtype = "float32",
    value_range: Sequence[float] | None = None,
    env: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> CheckedArguments:
    """Check the arguments of :class:`ExecutableSimulator` (and of ``simulator=command``'s config);
    raise :class:`ExecutableSimulatorError` naming the first field that cannot work. ``parameters``
    ``None`` or empty is the example wave's space, for the example wave's program only."""
    if env is not None and not isinstance(env, Mapping):
        raise ExecutableSimulatorError("env", f"must map variable names to values, got {env!r}")
    environment = {}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ExecutableSimulatorError("env", f"{key!r} is not an environment variable name")
        if value is None or isinstance(value, (Mapping, list, tuple)):
            raise ExecutableSimulatorError("env", f"{key}: give a string, got {value!r}")
        environment[key] = str(value)
    folder = None
    if cwd is not None:
        folder = os.path.abspath(os.path.expanduser(os.fspath(cwd)))
        if not os.path.isdir(folder):
            raise ExecutableSimulatorError("cwd", f"{os.fspath(cwd)!r} is not a folder; give an existing one or None")
    words, program = _check_argv(argv, environment, folder)
    if not parameters:
        # the example wave's own, for the example wave alone: a program of the user's declares its
        # own (a default space merged with theirs would give the model inputs it never reads)
        if len(words) < 2 or os.path.abspath(os.path.join(folder or os.getcwd(), words[1])) != os.path.abspath(
            TRAVELLING_WAVE
        ):
            raise ExecutableSimulatorError(
                "parameters",
                "declare your program's parameters, e.g. ++simulator.parameters='{viscosity: {low: 0.001, high: 0.1}}'",
            )
        parameters = travelling_wave_arguments()["parameters"]
    try:
        space = ParameterSpace.from_config(parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError) as exc:
        raise ExecutableSimulatorError("parameters", str(exc)) from None
    if isinstance(sample_shape, (str, bytes)) or not isinstance(sample_shape, Sequence):
        raise ExecutableSimulatorError("sample_shape", f"must be a list of sizes, e.g. [16, 16], got {sample_shape!r}")
    if not 1 <= len(sample_shape) <= 4 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n < 2**32 for n in sample_shape
    ):
        raise ExecutableSimulatorError(
            "sample_shape", f"1 to 4 positive integer sizes (the protocol's limit), got {list(sample_shape)}"
        )
    if samples_per_run is not None and (
        not isinstance(samples_per_run, (int, np.integer)) or isinstance(samples_per_run, bool) or samples_per_run < 1
    ):
        raise ExecutableSimulatorError(
            "samples_per_run", f"must be an integer >= 1 (or None: the program decides), got {samples_per_run!r}"
        )
    try:
        sample_dtype = np.dtype(dtype)
        dtype_code(sample_dtype)
    except TypeError:
        raise ExecutableSimulatorError("dtype", f"{dtype!r} is not a numpy dtype; e.g. float32") from None
    except ProtocolError as exc:
        raise ExecutableSimulatorError("dtype", str(exc)) from None
    bounds = None
    if value_range is not None:
        try:
            low, high = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ExecutableSimulatorError("value_range", f"[low, high] or None, got {value_range!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ExecutableSimulatorError("value_range", f"needs finite low < high, got {list(value_range)}")
        bounds = (low, high)
    return CheckedArguments(
        argv=words,
        program=program,
        space=space,
        sample_shape=tuple(int(n) for n in sample_shape),
        samples_per_run=None if samples_per_run is None else int(samples_per_run),
        dtype=sample_dtype,
        value_range=bounds,
        env=environment,
        cwd=folder,
    )


class ExecutableSimulator(Simulator):
    """A program that speaks the wire protocol, started once per simulation.

    ``argv`` is its command line, a list of words in which ``{address}``, ``{simulation_id}``
    and ``{attempt}`` are filled in for each simulation (format specs such as
    ``{attempt:03d}`` work; ``{{`` is a literal brace). All three are required: the program
    connects to the address and names the simulation and attempt in its ``HELLO``. The first
    word is the program: a path (relative to ``cwd``, or the current folder without one) or a
    name looked up on ``PATH`` (``env``'s ``PATH`` when it sets one); it is looked up once,
    here, and must exist and be executable.

    ``parameters`` is a parameter-space config, as :meth:`ParameterSpace.from_config` takes
    (``{name: {low: ..., high: ...}}``); each ``JOB`` carries them by name and as a vector.
    Every sample has ``sample_shape`` (1 to 4 sizes) and ``dtype`` (one the protocol carries),
    and a run sends ``samples_per_run`` of them (``None``: the program decides, and held-out
    validation is not possible). ``value_range`` bounds the sample values, when known. ``env``
    adds environment variables to the program's; ``cwd`` is its working directory.

    Any argument that cannot work raises :class:`ExecutableSimulatorError` (a ``ValueError``)
    naming it. See the module's example.
    """

    #: :meth:`simulate` hands out a copy of every sample
    fresh_samples = True

    def __init__(
        self,
        argv: Sequence[str],
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
        sample_shape: Sequence[int],
        samples_per_run: int | None,
        dtype: str | np.dtype = "float32",
        value_range: Sequence[float] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ):
        checked = check_arguments(argv, parameters, sample_shape, samples_per_run, dtype, value_range, env, cwd)
        self.argv = checked.argv
        self.program = checked.program
        self.space = checked.space
        self.sample_shape = checked.sample_shape
        self.samples_per_run = checked.samples_per_run
        self.dtype = checked.dtype
        self.value_range = checked.value_range
        self.env = checked.env
        self.cwd = checked.cwd

    @classmethod
    def travelling_wave(cls, steps: int = 20) -> ExecutableSimulator:
        """The example program that ships with ENGAGE (``simulator=command``'s default)."""
        return cls(**travelling_wave_arguments(steps))

    def launch_command(self, address: str, simulation_id: int, attempt: int) -> list[str]:
        """The command line that starts the program for one simulation (the trainer runs it as
        it is, with no shell)."""
        words = [w.format(address=address, simulation_id=simulation_id, attempt=attempt) for w in self.argv[1:]]
        command = [self.program, *words]
        if self.cwd is not None:
            command = ["/bin/sh", "-c", _IN_FOLDER, self.cwd, *command]
        if self.env:
            command = ["/usr/bin/env", *(f"{k}={v}" for k, v in self.env.items()), *command]
        return command

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "argv": list(self.argv)}

    def simulate(self, parameters: np.ndarray) -> Iterator[np.ndarray]:
        """One run of the program, received in this process by the online engine itself (the
        scheduler that trains on it: same checks of every message, no retry)."""
        from engage.core.online.buffer import TrainingBuffer
        from engage.core.online.scheduler import SimulationScheduler
        from engage.core.online.validation import HeldOutPoints

        capacity = min(self.samples_per_run or 64, 1024)
        buffer = TrainingBuffer(capacity=capacity, policy="fifo", max_reads=1)
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
                raise RuntimeError(
                    f"{self.argv[0]} did not complete its run: {scheduler.error or 'the simulation failed'}"
                )
