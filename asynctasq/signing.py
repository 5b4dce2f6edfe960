"""Optional HMAC signing of task messages (``signing_key``, ``signing_old_keys``).

With a key set, producers sign every message they write and workers check the signature before
they decode a single byte of it: a message that is unsigned, signed with an unknown key or
altered in transit goes to the failed registry and never runs. ``signing_old_keys`` lists keys
that workers still accept (but never sign with), so a key can be rotated without a flag day:
add the new key everywhere with the old one in ``signing_old_keys``, then drop the old one once
its messages are gone.

A signed message is ``MAGIC + HMAC-SHA256(key, payload) + payload``. ``MAGIC`` starts with
0xc1, a byte msgpack never uses and JSON and pickle never start with, so a signed message can
never be mistaken for an unsigned one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from asynctasq.errors import ConfigError, SerializationError

MAGIC = b"\xc1ATQS1"
DIGEST_SIZE = hashlib.sha256().digest_size
MIN_KEY_LENGTH = 32
"""Characters a key needs at least (32 random characters: ``python -c "import secrets;
print(secrets.token_urlsafe(32))"``)."""


class SignatureError(SerializationError):
    """A message whose signature is missing or does not match any accepted key."""


def _check_key(key: str, setting: str) -> bytes:
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(
            f"{setting} is {len(key)} characters long: a signing key needs at least {MIN_KEY_LENGTH} "
            'random characters (make one with: python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return key.encode()


class Signer:
    """Signs with ``key``; verifies with ``key`` or any of ``old_keys``. Its repr shows no key."""

    __slots__ = ("_accepted", "_key")

    def __init__(self, key: str, old_keys: Sequence[str] = ()) -> None:
        self._key = _check_key(key, "signing_key")
        self._accepted = [self._key, *(_check_key(k, "signing_old_keys") for k in old_keys)]

    @classmethod
    def from_settings(cls, key: str | None, old_keys: Sequence[str] = ()) -> Signer | None:
        """A signer, or None when signing is off; raises :class:`ConfigError` when misconfigured."""
        if not key:
            if old_keys:
                raise ConfigError(
                    "signing_old_keys is set but signing_key is not: set ASYNCTASQ_SIGNING_KEY to the "
                    "current key (old keys are only accepted next to a current one)"
                )
            return None
        return cls(key, old_keys)

    def __repr__(self) -> str:
        return f"Signer(keys={len(self._accepted)})"

    def sign(self, payload: bytes) -> bytes:
        return MAGIC + hmac.new(self._key, payload, hashlib.sha256).digest() + payload

    def verify(self, message: bytes) -> bytes:
        """The payload of a correctly signed ``message``; else :class:`SignatureError`."""
        if not message.startswith(MAGIC):
            raise SignatureError(
                "unsigned message refused: this worker has a signing key and accepts only messages "
                "signed with it (set the same ASYNCTASQ_SIGNING_KEY on the producers)"
            )
        start = len(MAGIC) + DIGEST_SIZE
        digest, payload = message[len(MAGIC) : start], message[start:]
        for key in self._accepted:
            if hmac.compare_digest(digest, hmac.new(key, payload, hashlib.sha256).digest()):
                return payload
        raise SignatureError(
            "bad signature: the message was altered or signed with a key this worker does not "
            "accept (check ASYNCTASQ_SIGNING_KEY and ASYNCTASQ_SIGNING_OLD_KEYS)"
        )


def strip_signature(message: bytes) -> bytes:
    """The payload of a signed message, unverified (for display: never to run a task)."""
    return message[len(MAGIC) + DIGEST_SIZE :] if message.startswith(MAGIC) else message
