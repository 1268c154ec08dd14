"""Reading a memory budget given as text, bytes or a fraction of device memory."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def fraction(budget: object) -> float | None:
    """The fraction of device memory ``budget`` asks for (a float, or a number written without a
    unit and with a decimal point, ``"0.8"``), else ``None`` (a size)."""
    if isinstance(budget, float):
        return budget
    if isinstance(budget, str):
        match = _PATTERN.match(budget)
        if match and not match.group(2) and "." in match.group(1) and float(match.group(1)) <= 1.0:
            return float(match.group(1))
    return None


def fraction_error(field: str, budget: object) -> str:
    """The line refusing ``budget``, a fraction of device memory outside (0, 1]; a whole number
    above 1 (``1e9`` from a command line) is taken to be bytes, as its fix says."""
    value = float(budget)  # type: ignore[arg-type]
    whole = math.isfinite(value) and value.is_integer() and value >= 1024  # 2.0: a fraction mistyped, not bytes
    bytes_hint = f"write {int(value)} for {int(value)} bytes, or" if whole else "write"
    return (
        f"{field}={budget} as a float is a fraction of device memory and must lie in (0, 1]; "
        f"{bytes_hint} a size such as '12GiB'"
    )


def _one_byte(field: str, budget: object) -> str:
    return f"{field}={budget!r} is one byte; write 1.0 for all of the device's memory, or a size such as '12GiB'"


def device_memory(device: torch.device | str | None = None) -> int:
    """Total memory of ``device`` in bytes: a CUDA device's own, or for the CPU the host's memory
    as this process may use it (:func:`host_memory`), where activations then live."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return host_memory()


def host_memory() -> int:
    """The host's memory in bytes, or less where this process's control group is limited to less
    (a Slurm job's ``--mem``, a container's limit): cgroup v2 ``memory.max`` or v1
    ``memory.limit_in_bytes`` of this process's group."""
    import psutil

    total = psutil.virtual_memory().total
    for path in _cgroup_limit_files():
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def _cgroup_limit_files() -> list[str]:
    """The memory limit files of this process's control groups (v2 and v1), most specific first."""
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, group = line.split(":", 2)
        if controllers == "":  # cgroup v2
            files.append(f"/sys/fs/cgroup{group.rstrip('/')}/memory.max")
        elif "memory" in controllers.split(","):
            files.append(f"/sys/fs/cgroup/memory{group.rstrip('/')}/memory.limit_in_bytes")
    return [*files, "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]


def parse_budget(budget: str | int | float, device: torch.device | str | None = None, field: str = "budget") -> int:
    """Turn ``budget`` into bytes.

    Accepts an integer number of bytes, a string with a unit (``"12GiB"``, ``"800 MB"``) or a float in
    ``(0, 1]`` read as a fraction of the device's total memory (on the CPU, the host's, or the
    process's cgroup limit where it is lower).

    Examples:
        >>> parse_budget("1.5GiB")
        1610612736
        >>> parse_budget(4096)
        4096
    """
    if isinstance(budget, bool):
        raise ValueError(f"{field}={budget!r} is not a memory size; write bytes (4096), '12GiB' or a fraction like 0.8")
    if isinstance(budget, int):
        if budget <= 0:
            raise ValueError(f"{field}={budget} must be positive; write a size such as '12GiB' or 12884901888")
        if budget == 1:
            raise ValueError(_one_byte(field, budget))
        return budget
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:  # NaN too
            raise ValueError(fraction_error(field, budget))
        # a fraction too small for one byte is one byte: no plan fits it, and the error names the least that does
        return max(1, int(budget * device_memory(device)))
    if isinstance(budget, str):
        match = _PATTERN.match(budget)
        unit = match.group(2).upper() if match else None
        if budget.strip().startswith("-") and _PATTERN.match(budget.strip()[1:]):
            raise ValueError(f"{field}={budget!r} must be positive; write a size such as '12GiB'")
        if match is not None and unit in ("K", "M", "G", "T"):
            number = match.group(1)
            raise ValueError(
                f"{field}={budget!r}: {unit} alone could mean {unit}iB (as Slurm reads it) or {unit}B; "
                f"write '{number}{unit}iB' or '{number}{unit}B'"
            )
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{field}={budget!r} is not a memory size; write a number with a unit among "
                "B, KB, MB, GB, KiB, MiB, GiB (for example '12GiB'), or a fraction such as 0.8"
            )
        if not unit and "." in match.group(1):
            if float(match.group(1)) <= 1.0:
                # "0.8" from a config file means the same as the float 0.8: a fraction of device memory.
                return parse_budget(float(match.group(1)), device, field)
            number = float(match.group(1))
            if number.is_integer() and number >= 1024:
                sizes = f"{int(number)} for {int(number)} bytes, a size with a unit ('12GiB')"
            else:
                sizes = f"a size with a unit ('{match.group(1)}GiB')"
            raise ValueError(
                f"{field}={budget!r} has no unit and is no fraction; write {sizes} or a fraction of device "
                "memory in (0, 1]"
            )
        if not unit and match.group(1).lstrip("0") == "1":
            raise ValueError(_one_byte(field, budget))
        value = float(match.group(1)) * _UNITS[unit]
        if value <= 0:
            raise ValueError(f"{field}={budget!r} must be positive; write a size such as '12GiB'")
        return int(value)
    raise ValueError(
        f"{field}={budget!r} has type {type(budget).__name__}; give a str such as '12GiB', an int or a float"
    )


def format_bytes(n: float) -> str:
    """Human-readable size with binary units.

    Examples:
        >>> format_bytes(3 * 2**30)
        '3.00 GiB'
    """
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.2f} {unit}"
        n /= 1024
    return f"{sign}{n:.2f} GiB"
