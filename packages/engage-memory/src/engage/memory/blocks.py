"""Finding the blocks of a model to plan: every repeated structure, or the modules the user names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from torch import nn


class NoBlocksError(ValueError):
    """The model has no repeated structure to plan and no ``blocks=`` were given; the message names the fix."""


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _repeated(container: nn.Module) -> bool:
    """Two or more children of one class that carry parameters: a stack of blocks, not a one-off layer list."""
    kinds = Counter(type(child) for child in container.children() if _has_params(child))
    return bool(kinds) and kinds.most_common(1)[0][1] >= 2


def _containers(model: nn.Module, accept: Callable[[nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    """Outermost ``ModuleList``/``Sequential`` modules that ``accept`` takes, in definition order."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()  # a module reachable twice (a compiled wrapper's original) is planned once

    def walk(prefix: str, module: nn.Module) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and accept(module):
            found.append((prefix, module))
            return  # blocks inside a planned block belong to it
        for name, child in module.named_children():
            walk(f"{prefix}.{name}" if prefix else name, child)

    walk("", model)
    return found


def find_blocks(model: nn.Module, names: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The blocks to plan: ``names`` if given, else the children of every repeated structure.

    A repeated structure is an ``nn.ModuleList`` or ``nn.Sequential`` holding two or more children of one
    class with parameters (the layers of a transformer, the stages of a ResNet, a U-Net's encoder and its
    decoder); all their children are planned, and the lists inside a planned block are part of it. A model
    without one falls back to any list holding two or more modules with parameters.

    Examples:
        >>> import torch
        >>> net = torch.nn.ModuleDict({"emb": torch.nn.Linear(2, 2),
        ...                            "down": torch.nn.ModuleList([torch.nn.Linear(9, 9), torch.nn.Linear(9, 9)]),
        ...                            "up": torch.nn.ModuleList([torch.nn.Linear(9, 9), torch.nn.Linear(9, 9)])})
        >>> [n for n, _ in find_blocks(net)]
        ['down.0', 'down.1', 'up.0', 'up.1']
    """
    if names:
        blocks = []
        for name in names:
            try:
                blocks.append((name, model.get_submodule(name)))
            except AttributeError:
                raise NoBlocksError(
                    f"blocks= names {name!r}, which {type(model).__name__} does not have; "
                    "name submodules as in model.named_modules(), such as 'layers.0'"
                ) from None
        _check_apart(blocks)
        return blocks
    containers = _containers(model, _repeated) or _containers(
        model, lambda m: sum(_has_params(child) for child in m.children()) >= 2
    )
    blocks = [
        (f"{prefix}.{key}" if prefix else key, child)
        for prefix, container in containers
        for key, child in container.named_children()
    ]
    if len(blocks) < 2:
        raise NoBlocksError(
            f"{type(model).__name__} has no nn.ModuleList or nn.Sequential of 2 or more blocks with parameters "
            "to plan; pass blocks=['name.of.block', ...] naming the modules to plan"
        )
    return blocks


def _check_apart(blocks: list[tuple[str, nn.Module]]) -> None:
    """Each block named once, and none inside another (one would be planned twice)."""
    seen: dict[int, str] = {}
    for name, module in blocks:
        if id(module) in seen:
            raise NoBlocksError(f"blocks= names {seen[id(module)]!r} and {name!r}, the same module; name it once")
        seen[id(module)] = name
    for name, module in blocks:
        for inner in module.modules():
            if inner is not module and id(inner) in seen:
                raise NoBlocksError(
                    f"blocks= names {name!r} and {seen[id(inner)]!r}, which is inside it; "
                    "name blocks that do not contain one another"
                )
