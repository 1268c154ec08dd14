"""Providers by name. Each entry is ``"module:Class"``, imported only when used, so that choosing
the ``local`` provider never imports a testbed's client library.

Example::

    >>> from engage.deploy.providers import PROVIDERS, get_provider
    >>> sorted(PROVIDERS)
    ['chameleon', 'g5k', 'local', 'netns', 'static', 'vagrant']
    >>> get_provider("local").__name__
    'LocalProvider'
"""

from __future__ import annotations

import importlib

from engage.deploy.infrastructure import InfrastructureError
from engage.deploy.providers.base import Host, Provider, ProviderError

PROVIDERS: dict[str, str] = {
    "local": "engage.deploy.providers.local:LocalProvider",
    "netns": "engage.deploy.providers.netns:NetnsProvider",
    "g5k": "engage.deploy.providers.testbeds:G5kProvider",
    "chameleon": "engage.deploy.providers.testbeds:ChameleonProvider",
    "vagrant": "engage.deploy.providers.testbeds:VagrantProvider",
    "static": "engage.deploy.providers.testbeds:StaticProvider",
}


def get_provider(name: str) -> type[Provider]:
    """The provider class registered as ``name``; an unknown name lists the known ones."""
    if name not in PROVIDERS:
        raise InfrastructureError(
            f"infrastructure.provider: unknown provider {name!r}; known providers: {', '.join(sorted(PROVIDERS))}"
        )
    module_name, _, class_name = PROVIDERS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderError(f"provider {name!r} cannot be loaded ({exc}); reinstall engage-deploy") from exc
    return getattr(module, class_name)


__all__ = ["PROVIDERS", "Host", "Provider", "ProviderError", "get_provider"]
