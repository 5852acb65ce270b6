"""
Tangram's own frontend and plugin flows, end to end: a Tangram-like client on the official
phoenix.js (tests/js/tangram_flows.mjs) and a Redis-only plugin process
(tests/plugins/tangram_plugin.py) around a real ``twistd`` service.
"""

import pytest

from .jsdriver import PHOENIX_VERSIONS, channel_service  # noqa: F401


@pytest.mark.parametrize("phoenix", PHOENIX_VERSIONS)
def test_frontend_and_plugins_exchange_what_tangram_expects(channel_service, phoenix):
    """
    system token without id gives the connection id; per-topic tokens reuse it; bound-box and
    join-streaming reach the plugin as sent; search is answered with the same request_id; a
    ~300 KB stream frame, update-node ticks and the colon topic datalink:feed reach the client.
    """
    service = channel_service()
    plugin = service.driver("tangram_plugin.py")
    plugin.expect("subscribed")
    client = service.driver("tangram_flows.mjs", PHOENIX_VERSION=phoenix)
    connection_id = client.expect("connected")["id"]
    assert len(connection_id) == 8 and connection_id.isalnum()
    assert sorted(client.expect("subscribed")["topics"]) == sorted(
        ["system", f"streaming-{connection_id}", "datalink:feed"]
    )

    assert plugin.expect("join-streaming")["payload"] == {"connectionId": connection_id}
    bbox = plugin.expect("bound-box")["payload"]
    assert bbox["connectionId"] == connection_id
    assert bbox["selectedEntities"] == [{"id": "39c4a1", "typeName": "jet1090_aircraft"}]
    asked = plugin.expect("search")["payload"]
    assert asked["query"] == "AFR"

    search = client.expect("search")
    assert search["requestId"] == asked["request_id"]
    assert [r["state"]["callsign"] for r in search["data"]] == ["AFR0000", "AFR0001", "AFR0002"]

    streamed = client.expect("streamed")
    assert streamed["count"] == streamed["aircraft"] == 1500
    assert streamed["bytes"] > 200_000
    assert streamed["first"]["icao24"] == "39c000"

    nodes = client.expect("update-node")["nodes"]
    assert nodes["uptime"].startswith("0:00:")
    assert isinstance(nodes["info_utc"], int)
    assert client.expect("datalink")["payload"] == {"label": "H1", "flight": "AFR123", "text": "POS N43 E001"}
    client.finish()
