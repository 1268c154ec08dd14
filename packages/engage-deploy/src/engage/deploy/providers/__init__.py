"""Providers by name, contributed through the ``engage_providers`` hook (engage-deploy's plugin
adds ``local``, ``netns``, ``slurm``, ``g5k``, ``chameleon``, ``vagrant`` and ``static``). A testbed provider
imports its client library when it deploys, so that choosing the ``local`` provider never imports
a testbed's.

Example::

    >>> from engage.deploy.providers import get_provider, provider_names
    >>> provider_names()
    ['chameleon', 'g5k', 'local', 'netns', 'slurm', 'static', 'vagrant']
    >>> get_provider("local").__name__
    'LocalProvider'
"""

from __future__ import annotations

from engage.core.plugins import providers
from engage.deploy.infrastructure import InfrastructureError
from engage.deploy.providers.base import Host, Provider, ProviderError


def provider_names() -> list[str]:
    """The names of every installed provider, sorted."""
    return sorted(providers())


def get_provider(name: str) -> type[Provider]:
    """The provider class registered as ``name``; an unknown name lists the known ones."""
    known = providers()
    if name not in known:
        raise InfrastructureError(
            f"infrastructure.provider: unknown provider {name!r}; known providers: {', '.join(sorted(known))}"
        )
    return known[name]


__all__ = ["Host", "Provider", "ProviderError", "get_provider", "provider_names"]
