"""Join tokens: what is minted, and every way a token is refused, on an injected clock."""

from __future__ import annotations

import string
from functools import partial

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.task import Clock

from tangram_channel.frames import HeaderLimits
from tangram_channel.naming import is_admin_topic
from tangram_channel.tokens import Grant, TokenAuthority, TokenRefused, random_id

from .e2e import forge_token
from .fakes import SECRET, claims_of

LEEWAY = 60
# a fixed "now" far from the wall clock, so nothing passes by accident of real time
START = 1_000_000.0


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def authority(clock: Clock) -> TokenAuthority:
    return TokenAuthority(SECRET, 3600, LEEWAY, 8, clock.seconds)


# alice's token for "room", issued at START; keywords change it (a claim given as None is left out)
signed = partial(forge_token, secret=SECRET, channel="room", client_id="alice", now=START)


def refusal(authority: TokenAuthority, token: object, topic: str = "room") -> str:
    with pytest.raises(TokenRefused) as caught:
        authority.verify(token, topic)
    return caught.value.reason


# minting


def test_mint_signs_id_channel_iat_exp_with_hs256(authority: TokenAuthority) -> None:
    client_id, token = authority.mint("room", "alice")
    assert client_id == "alice"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims_of(token) == {"id": "alice", "channel": "room", "iat": START, "exp": START + 3600}


def test_mint_honours_expires_in(authority: TokenAuthority) -> None:
    _, token = authority.mint("room", "alice", expires_in=5)
    assert claims_of(token)["exp"] == START + 5


def test_mint_without_id_draws_a_random_id_of_id_length(clock: Clock) -> None:
    authority = TokenAuthority(SECRET, 3600, LEEWAY, 13, clock.seconds)
    ids = {authority.mint("room")[0] for _ in range(50)}
    assert len(ids) == 50
    for client_id in ids:
        assert len(client_id) == 13
        assert set(client_id) <= set(string.ascii_letters + string.digits)


def test_random_id_uses_the_whole_alphanumeric_alphabet() -> None:
    drawn = set(random_id(5000))
    assert drawn == set(string.ascii_letters + string.digits)


def test_a_minted_token_verifies_for_its_channel(authority: TokenAuthority) -> None:
    _, token = authority.mint("room", "alice")
    assert authority.verify(token, "room") == Grant(id="alice", channel="room")


# refusals


def test_alg_none_is_refused(authority: TokenAuthority) -> None:
    assert refusal(authority, signed(algorithm="none")) == "unauthorized"


def test_hs512_with_the_right_secret_is_refused(authority: TokenAuthority) -> None:
    assert refusal(authority, signed(algorithm="HS512")) == "unauthorized"


def test_rs256_is_refused(authority: TokenAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert refusal(authority, signed(secret=pem, algorithm="RS256")) == "unauthorized"


def test_a_token_signed_with_another_key_is_refused(authority: TokenAuthority) -> None:
    assert refusal(authority, signed(secret="another-secret-of-at-least-32-bytes")) == "unauthorized"


def test_a_token_without_exp_is_refused(authority: TokenAuthority) -> None:
    assert refusal(authority, signed(exp=None)) == "unauthorized"


@pytest.mark.parametrize("exp", ["2100-01-01", [START + 3600], True])
def test_a_non_numeric_exp_is_unauthorized_not_expired(authority: TokenAuthority, exp: object) -> None:
    assert refusal(authority, signed(exp=exp)) == "unauthorized"


def test_expiry_counts_leeway_on_the_injected_clock(authority: TokenAuthority, clock: Clock) -> None:
    _, token = authority.mint("room", "alice", expires_in=10)
    clock.advance(10 + LEEWAY)
    assert authority.verify(token, "room").id == "alice"
    clock.advance(1)
    assert refusal(authority, token) == "token expired"


def test_a_token_expired_long_ago_is_refused_as_expired(authority: TokenAuthority) -> None:
    assert refusal(authority, signed(exp=int(START) - 3600)) == "token expired"


def test_the_channel_claim_must_be_the_topic(authority: TokenAuthority) -> None:
    _, token = authority.mint("room", "alice")
    assert refusal(authority, token, topic="other") == "unauthorized"


@pytest.mark.parametrize("changes", [{"id": 7}, {"id": None}, {"channel": ["room"]}, {"channel": None}])
def test_id_and_channel_must_be_strings(authority: TokenAuthority, changes: dict) -> None:
    assert refusal(authority, signed(**changes)) == "unauthorized"


@pytest.mark.parametrize("token", [None, "", 42, {"token": "x"}, "not.a.jwt", "garbage"])
def test_a_missing_or_malformed_token_is_unauthorized(authority: TokenAuthority, token: object) -> None:
    assert refusal(authority, token) == "unauthorized"


# caps: what a join refuses is never minted


@pytest.mark.parametrize(
    "client_id, reason",
    [("i" * 129, "token id is longer than 128 bytes"), ("\ud800", "token id is not valid Unicode")],
)
def test_a_token_id_over_its_cap_or_not_unicode_is_refused_at_join(
    authority: TokenAuthority, client_id: str, reason: str
) -> None:
    """Presence copies the id to every member: one signed elsewhere may be of any size."""
    assert refusal(authority, signed(id=client_id)).startswith(reason)
    assert authority.verify(signed(id="i" * 128), "room") == Grant(id="i" * 128, channel="room")


@pytest.mark.parametrize(
    "channel, client_id, problem",
    [
        ("\ud800", "alice", '"channel" is not valid Unicode'),
        ("t" * 257, "alice", '"channel" is longer than 256 bytes'),
        ("room", "i" * 129, '"id" is longer than 128 bytes'),
        ("room", "a\udfff", '"id" is not valid Unicode'),
    ],
)
def test_mint_refuses_what_a_join_would_refuse(
    authority: TokenAuthority, channel: str, client_id: str, problem: str
) -> None:
    assert authority.claims_problem(channel, client_id).startswith(problem)
    with pytest.raises(ValueError, match=problem):
        authority.mint(channel, client_id)


def test_caps_come_from_the_limits_given(clock: Clock) -> None:
    authority = TokenAuthority(SECRET, 3600, LEEWAY, 8, clock.seconds, limits=HeaderLimits(topic=4, id=2))
    assert authority.claims_problem("room", "ab") is None
    assert authority.claims_problem("rooms", "ab") and authority.claims_problem("room", "abc")
    assert refusal(authority, signed(id="abc")) == "token id is longer than 2 bytes"


@pytest.mark.parametrize("channel, admin", [("admin", True), ("admin:ops", True), ("administrators", False), ("x:admin", False)])
def test_topics_under_admin_are_admin_channels(channel: str, admin: bool) -> None:
    assert is_admin_topic(channel) is admin
