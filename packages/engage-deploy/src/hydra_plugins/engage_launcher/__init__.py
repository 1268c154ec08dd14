"""Hydra plugins of engage-deploy: the ``engage`` launcher and the ``infrastructure`` config search path."""
