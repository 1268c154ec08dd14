"""User-space network emulation for kernels without ``netem``.

* :mod:`~engage.deploy.netem.link`: the delay and seeded loss of one link direction;
* :mod:`~engage.deploy.netem.forwarder`: the process that moves packets through TUN devices with
  that delay and loss (``python -m engage.deploy.netem.forwarder links.json``);
* :mod:`~engage.deploy.netem.shaping`: rate limits with ``tc`` ``htb``, one class per host pair;
* :mod:`~engage.deploy.netem.measure`: RTT, loss and goodput measurements between two hosts.

The ``netns`` provider puts them together; see ``docs/network-emulation.md``.

Example::

    >>> from engage.deploy.netem import LinkEmulator, LinkSpec
    >>> link = LinkEmulator(LinkSpec(name="edge->cloud", device="t1", delay=0.01))
    >>> link.receive(b"p", now=0.0), link.next_due()
    (True, 0.01)
"""

# only the link model here: the forwarder and the measurement tools run as ``python -m`` modules
# and must not be imported by their own package first
from engage.deploy.netem.link import LinkEmulator, LinkSpec, LinkStats

__all__ = ["LinkEmulator", "LinkSpec", "LinkStats"]
