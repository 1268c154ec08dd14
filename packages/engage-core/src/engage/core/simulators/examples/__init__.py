"""Simulation programs that speak the wire protocol without ENGAGE (``docs/protocol.md``)."""
