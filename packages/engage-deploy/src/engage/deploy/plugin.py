"""engage-deploy's plugin: the ``infrastructure`` configs, the deploy executor and the
``engage replay`` and ``engage place`` sub-commands."""

from __future__ import annotations

from engage.core.hookspecs import hookimpl


@hookimpl
def engage_config_searchpath() -> list[str]:
    # the shipped `infrastructure/*.yaml` examples (local, netns, g5k, chameleon, vagrant, static)
    return ["pkg://engage.deploy.conf"]
