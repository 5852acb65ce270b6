"""tangram-channel: Tangram's real-time hub, Phoenix channels bridged to Redis, on Twisted."""

# the one place the version is written: setup.cfg, --version and /healthz read it here
__version__ = "0.2.0"
