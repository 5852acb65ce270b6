from twisted.application.service import ServiceMaker

tangram_channel = ServiceMaker(
    "tangram-channel",
    "tangram_channel.tap",
    "Tangram's real-time hub: Phoenix channels over WebSocket, bridged to Redis",
    "tangram-channel",
)
