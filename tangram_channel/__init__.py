"""tangram-channel: Tangram's real-time hub, Phoenix channels bridged to Redis, on Twisted."""

__version__ = "0.1.0"
