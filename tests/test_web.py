"""The HTTP surface in memory (treq's StubTreq): /token, CORS, and the socket's HTTP refusals."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from tangram_channel.protocol import PhoenixFactory
from tangram_channel.longpoll import LongPolls
from tangram_channel.pollroute import SessionRoutes
from tangram_channel.web import MAX_TOKEN_REQUEST, SocketResource, make_site

from .fakes import World, claims_of

ADMIN_KEY = "admin-key-for-tests"
JSON = {"content-type": "application/json"}


def phoenix_factory(world: World) -> PhoenixFactory:
    return PhoenixFactory(hub=world.hub, clock=world.clock)


def client(
    id_length: int = 8,
    admin_key: str | None = None,
    cors_origins: tuple[str, ...] = ("*",),
    allowed_origins: tuple[str, ...] = ("*",),
) -> StubTreq:
    """A StubTreq on the service's real Site (its request class adds CORS)."""
    world = World()
    world.tokens.id_length = id_length
    factory = phoenix_factory(world)
    site = make_site(
        factory=factory,
        tokens=world.tokens,
        admin_key=admin_key,
        cors_origins=cors_origins,
        allowed_origins=allowed_origins,
        longpolls=LongPolls(
            poll_timeout=10, session_timeout=20, max_per_ip=0, max_sessions=0, metrics=factory.metrics, routes=SessionRoutes(b"s")
        ),
    )
    stub = StubTreq(site.resource)
    # StubTreq serves the resource through a plain Site of its own; give it our request class.
    stub._agent._serverFactory.requestFactory = site.requestFactory
    return stub


def fired(d: Deferred) -> Any:
    """The result of a Deferred that must already have fired (everything here is in memory)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the in-memory request did not complete"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Answer:
    """One response: status, headers and body."""

    def __init__(self, stub: StubTreq, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        response = fired(stub.request(method, "http://tangram.test" + path, data=body, headers=headers))
        self.code: int = response.code
        self.headers = response.headers
        self.body: bytes = fired(stub.content(response))

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        assert self.header("content-type") == "application/json"
        return json.loads(self.body)


def post_token(stub: StubTreq, fields: Any, headers: dict[str, str] | None = None) -> Answer:
    body = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
    return Answer(stub, "POST", "/token", body, {**JSON, **(headers or {})})


# POST /token


def test_token_echoes_the_id_and_signs_it() -> None:
    answer = post_token(client(), {"channel": "system", "id": "conn-42"})
    assert answer.code == 200
    body = answer.json()
    assert (body["channel"], body["id"]) == ("system", "conn-42")
    claims = claims_of(body["token"])
    assert (claims["id"], claims["channel"]) == ("conn-42", "system")
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize("fields", [{"channel": "system"}, {"channel": "system", "id": None}])
def test_token_without_id_gets_a_random_id_of_id_length(fields: dict[str, Any]) -> None:
    body = post_token(client(id_length=11), fields).json()
    assert len(body["id"]) == 11
    assert set(body["id"]) <= set(string.ascii_letters + string.digits)
    assert claims_of(body["token"])["id"] == body["id"]


def test_token_ignores_unknown_fields() -> None:
    answer = post_token(client(), {"channel": "room", "id": "a", "colour": "blue", "extra": [1]})
    assert answer.code == 200
    assert set(answer.json()) == {"channel", "id", "token"}


def test_content_type_with_charset_is_json() -> None:
    answer = post_token(client(), {"channel": "room"}, {"content-type": "application/json; charset=utf-8"})
    assert answer.code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_token_without_json_content_type_is_415(content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    answer = Answer(client(), "POST", "/token", b'{"channel":"room"}', headers)
    assert answer.code == 415
    assert answer.json()["error"]


@pytest.mark.parametrize("body", [b"{", b"channel=room", b'{"channel": NaN}', b"\xff\xfe", b""])
def test_token_with_malformed_json_is_400(body: bytes) -> None:
    answer = post_token(client(), body)
    assert answer.code == 400
    assert answer.json()["error"]


@pytest.mark.parametrize(
    "fields",
    [{}, {"id": "a"}, {"channel": None}, {"channel": ""}, {"channel": 5}, {"channel": "room", "id": 7}, ["room"], "room"],
)
def test_token_with_missing_or_mistyped_fields_is_422(fields: Any) -> None:
    answer = post_token(client(), fields)
    assert answer.code == 422
    assert answer.json()["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405_with_allow(method: str) -> None:
    answer = Answer(client(), method, "/token", None, {})
    assert answer.code == 405
    assert "POST" in answer.header("allow")
    assert answer.json()["error"]


def test_a_huge_body_is_413() -> None:
    body = json.dumps({"channel": "room", "pad": "x" * MAX_TOKEN_REQUEST}).encode()
    answer = post_token(client(), body)
    assert answer.code == 413
    assert answer.json()["error"]


# admin tokens


def test_admin_token_is_refused_without_an_admin_key_configured() -> None:
    answer = post_token(client(), {"channel": "admin"}, {"authorization": "Bearer anything"})
    assert answer.code == 403
    assert answer.json()["error"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer " + ADMIN_KEY + "x", ADMIN_KEY, "bearer x"])
def test_admin_token_is_refused_with_a_wrong_bearer(authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    answer = post_token(client(admin_key=ADMIN_KEY), {"channel": "admin"}, headers)
    assert answer.code == 403


def test_admin_token_is_minted_with_the_right_bearer() -> None:
    answer = post_token(client(admin_key=ADMIN_KEY), {"channel": "admin", "id": "op"}, {"authorization": "Bearer " + ADMIN_KEY})
    assert answer.code == 200
    assert claims_of(answer.json()["token"])["channel"] == "admin"


@pytest.mark.parametrize("channel", ["admin:ops", "admin:"])
def test_topics_under_admin_need_the_admin_key_too(channel: str) -> None:
    assert post_token(client(admin_key=ADMIN_KEY), {"channel": channel}).code == 403
    answer = post_token(client(admin_key=ADMIN_KEY), {"channel": channel}, {"authorization": "Bearer " + ADMIN_KEY})
    assert answer.code == 200


@pytest.mark.parametrize(
    "fields, sentence",
    [
        ({"channel": "room\ud800"}, '"channel" is not valid Unicode (it holds a lone surrogate)'),
        ({"channel": "t" * 257}, '"channel" is longer than 256 bytes'),
        ({"channel": "é" * 129}, '"channel" is longer than 256 bytes'),
        ({"channel": "room", "id": "i" * 60_000}, '"id" is longer than 128 bytes'),
        ({"channel": "room", "id": "\udc00"}, '"id" is not valid Unicode (it holds a lone surrogate)'),
    ],
)
def test_token_refuses_what_a_join_would_refuse_with_422(fields: dict[str, str], sentence: str) -> None:
    """The body is a JSON escape (``\\ud800``): legal JSON, no Unicode scalar."""
    answer = post_token(client(), json.dumps(fields).encode())
    assert (answer.code, answer.json()) == (422, {"error": sentence})


def test_token_accepts_fields_at_their_caps() -> None:
    answer = post_token(client(), {"channel": "t" * 254 + "é", "id": "i" * 128})
    assert answer.code == 200
    assert claims_of(answer.json()["token"])["id"] == "i" * 128


# CORS


@pytest.mark.parametrize(
    "method, path, body, headers",
    [
        ("POST", "/token", b'{"channel":"room"}', JSON),
        ("POST", "/token", b"{", JSON),
        ("POST", "/token", b"{}", {}),
        ("GET", "/token", None, {}),
        ("GET", "/websocket", None, {}),
        ("GET", "/websocket?vsn=9", None, {}),
        ("GET", "/nowhere", None, {}),
    ],
)
def test_every_response_carries_the_cors_header(method: str, path: str, body: bytes | None, headers: dict) -> None:
    answer = Answer(client(), method, path, body, {**headers, "origin": "https://app.example"})
    assert answer.header("access-control-allow-origin") == "*"


@pytest.mark.parametrize("path", ["/token", "/websocket", "/anything"])
def test_preflight_is_204_with_methods_and_headers(path: str) -> None:
    answer = Answer(client(), "OPTIONS", path, None, {"origin": "https://app.example"})
    assert answer.code == 204
    assert answer.header("access-control-allow-origin") == "*"
    assert "POST" in answer.header("access-control-allow-methods")
    allowed = answer.header("access-control-allow-headers").lower()
    assert "content-type" in allowed and "authorization" in allowed


def test_a_cors_list_echoes_an_allowed_origin_only() -> None:
    stub = client(cors_origins=("https://a.example", "https://b.example"))
    allowed = post_token(stub, {"channel": "room"}, {"origin": "https://b.example"})
    assert allowed.header("access-control-allow-origin") == "https://b.example"
    assert allowed.header("vary") == "Origin"
    refused = post_token(stub, {"channel": "room"}, {"origin": "https://evil.example"})
    assert refused.code == 200
    assert refused.header("access-control-allow-origin") is None


# the socket's HTTP answers


@pytest.mark.parametrize("path", ["/websocket", "/socket/websocket", "/websocket/websocket"])
def test_socket_refuses_an_unknown_vsn_with_400_and_a_json_body(path: str) -> None:
    answer = Answer(client(), "GET", path + "?vsn=3.0.0", None, {"upgrade": "websocket"})
    assert answer.code == 400
    assert "vsn" in answer.json()["error"]


def test_socket_refuses_an_origin_not_allowed_with_403() -> None:
    stub = client(allowed_origins=("https://app.example",))
    answer = Answer(stub, "GET", "/websocket?vsn=2.0.0", None, {"origin": "https://evil.example", "upgrade": "websocket"})
    assert answer.code == 403
    assert answer.json()["error"]


@pytest.mark.parametrize("path", ["/websocket", "/socket/websocket", "/websocket?vsn=1.0.0"])
def test_a_plain_get_on_the_socket_is_426(path: str) -> None:
    answer = Answer(client(), "GET", path, None, {})
    assert answer.code == 426
    assert answer.json()["error"]


def test_the_426_says_to_upgrade_to_websocket() -> None:
    """Twisted's HTTP client hides the Upgrade header, so this renders the resource directly."""
    request = DummyRequest([])
    request.method = b"GET"
    SocketResource(phoenix_factory(World()), ("*",)).render(request)
    assert request.responseCode == 426
    assert request.responseHeaders.getRawHeaders(b"upgrade") == [b"websocket"]


@pytest.mark.parametrize("path", ["/longpoll", "/socket/longpoll", "/websocket/longpoll", "/websocket/longpoll/"])
def test_each_socket_path_has_its_long_poll_path(path: str) -> None:
    """phoenix.js long-polls its socket path with its last ``websocket`` replaced by ``longpoll``."""
    answer = Answer(client(), "GET", path + "?vsn=2.0.0", None, {})
    opened = json.loads(answer.body)
    assert (answer.code, opened["status"], opened["messages"]) == (200, 410, [])
    assert answer.header("cache-control") == "no-store"
    assert answer.header("access-control-allow-origin") == "*"


@pytest.mark.parametrize("path", ["/websocket/other", "/websocket/longpoll/other", "/socket/longpoll/x"])
def test_other_paths_below_the_socket_are_404(path: str) -> None:
    assert Answer(client(), "GET", path, None, {}).code == 404
