"""
Join tokens: HS256 JWTs that name one channel and one client id.

Minting and checking live together so the two can never disagree on algorithm,
claims or clock.
"""

from __future__ import annotations

import secrets
import string
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from .frames import DEFAULT_LIMITS, HeaderLimits, field_problem

# PyJWT warns on every short key, through the log of whatever calls it; the service
# warns once at start-up about the one short key that matters, the default.
_InsecureKeyLength = getattr(getattr(jwt, "warnings", None), "InsecureKeyLengthWarning", None)
if _InsecureKeyLength is not None:
    warnings.filterwarnings("ignore", category=_InsecureKeyLength)

_ID_ALPHABET = string.ascii_letters + string.digits
class TokenRefused(Exception):
    """The token does not admit its bearer; ``reason`` is what the client is told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What a verified token allows: client ``id`` may join ``channel``."""

    id: str
    channel: str


def random_id(length: int) -> str:
    """A random ``[A-Za-z0-9]`` id, as Tangram's frontend expects for its connection id."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


class TokenAuthority:
    """Mints and verifies join tokens with one secret and one clock."""

    def __init__(
        self,
        secret: str,
        expiration_secs: int,
        leeway_secs: int,
        id_length: int,
        now: Callable[[], float],
        limits: HeaderLimits = DEFAULT_LIMITS,
    ) -> None:
        self._secret = secret
        self._expiration_secs = expiration_secs
        self._leeway_secs = leeway_secs
        self.id_length = id_length
        self._now = now
        self._limits = limits

    def claims_problem(self, channel: str, client_id: str | None) -> str | None:
        """Why a join would refuse a token for ``channel`` and ``client_id``, in a sentence; None if it would not."""
        problem = field_problem('"channel"', channel, self._limits.topic)
        if problem is None and client_id is not None:
            problem = field_problem('"id"', client_id, self._limits.id)
        return problem

    def mint(self, channel: str, client_id: str | None = None, expires_in: int | None = None) -> tuple[str, str]:
        """Return ``(id, token)``; a missing ``client_id`` gets a random one. ValueError if a join would refuse it."""
        problem = self.claims_problem(channel, client_id)
        if problem is not None:
            raise ValueError(problem)
        if client_id is None:
            client_id = random_id(self.id_length)
        issued = int(self._now())
        lifetime = self._expiration_secs if expires_in is None else expires_in
        claims = {"id": client_id, "channel": channel, "iat": issued, "exp": issued + lifetime}
        return client_id, jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: object, topic: str) -> Grant:
        """
        Check ``token`` for joining ``topic``; raise TokenRefused with the reason.

        Only HS256 is accepted (never ``none`` or an asymmetric algorithm whose public
        key could be mistaken for our secret), ``exp`` is required, and the
        ``channel`` claim must name the topic.
        """
        if not isinstance(token, str) or not token:
            raise TokenRefused("unauthorized")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                leeway=self._leeway_secs,
                options={"require": ["exp"], "verify_iat": False, "verify_exp": False},
            )
        except jwt.InvalidTokenError:
            raise TokenRefused("unauthorized") from None
        # PyJWT would check exp against the wall clock; we check it against ours so
        # that tests and the service agree on what "now" is.
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenRefused("unauthorized")
        if exp + self._leeway_secs < self._now():
            raise TokenRefused("token expired")
        client_id, channel = claims.get("id"), claims.get("channel")
        if not isinstance(client_id, str) or not isinstance(channel, str):
            raise TokenRefused("unauthorized")
        if channel != topic:
            raise TokenRefused("unauthorized")
        # presence copies the id to every member: one minted elsewhere may be of any size
        problem = field_problem("token id", client_id, self._limits.id)
        if problem is not None:
            raise TokenRefused(problem)
        return Grant(id=client_id, channel=channel)
