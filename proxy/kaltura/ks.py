"""Kaltura Sessions (KS): reading the user out of one, and minting new ones.

A KS is the credential a Kaltura client sends as ``ks``. It names a partner,
a user, a session type (0 user, 2 admin), an expiry and a list of
privileges, and it is signed with the partner's admin secret. Two formats
are in use (section 3 of the shared ``PROTOCOL.md``):

- **v1** is base64 of ``<sha1 hex>|<info>``, where ``info`` is a
  ``;``-separated list: partner, partner again, valid-until, type, random,
  user, privileges and two optional fields. Anyone can read it; only a
  holder of the admin secret can check the signature, which is
  ``sha1(secret + info)``.
- **v2** is urlsafe base64 of ``v2|<partner>|<ciphertext>``. Only the
  partner is in clear. The fields are an AES-128-CBC encrypted query
  string keyed by the admin secret, so reading them and checking them are
  the same step: without a matching secret the user stays unknown.

The server refuses a KS whose signature does not match, so the proxy never
alters one: `parse_ks` reads a copy and the KS goes upstream as it came.
Parsing never checks expiry either; an expired KS still names its user, and
the expiry is only reported.

This module serves the **resolve** step: the user of a request's own KS
(source ``ks``), the ``ks`` decoder of a cookie or header, and telling a
widget KS from a user's. `make_ks_v1` and `make_ks_v2` build a KS the way
the server and the official clients do, for the proxy's own sessions and
for tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from secrets import randbelow, token_bytes
from typing import TYPE_CHECKING, ClassVar, Final
from urllib.parse import parse_qs, quote_plus

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = [
    "MAX_KS_LENGTH",
    "NO_SECRETS",
    "SESSION_TYPE_ADMIN",
    "SESSION_TYPE_USER",
    "AdminSecrets",
    "KalturaSession",
    "make_ks_v1",
    "make_ks_v2",
    "parse_ks",
]

SESSION_TYPE_USER: Final = 0
SESSION_TYPE_ADMIN: Final = 2

# Real sessions run to a few hundred characters; a longer value is refused
# before any decoding, so a hostile cookie or parameter costs nothing.
MAX_KS_LENGTH: Final = 4096

_V2_MARK: Final = b"v2|"
_SHA1_SIZE: Final = 20
_RANDOM_SIZE: Final = 16
_BLOCK_SIZE: Final = 16
_ZERO_IV: Final = bytes(_BLOCK_SIZE)

# hash, random bytes and at least one byte of fields, padded to whole blocks
_MIN_V2_CIPHERTEXT: Final = 48

# v2 keys that are session fields; every other key is a privilege
_V2_EXPIRY: Final = "_e"
_V2_TYPE: Final = "_t"
_V2_USER: Final = "_u"
_V2_RESERVED: Final = frozenset({_V2_EXPIRY, _V2_TYPE, _V2_USER, "_m", "_d"})

_TO_STANDARD_ALPHABET: Final = str.maketrans("-_", "+/")
_INTEGER: Final = re.compile(r"-?[0-9]{1,19}")
_INTEGER_BYTES: Final = re.compile(rb"-?[0-9]{1,19}")
_SHA1_HEX: Final = re.compile(rb"[0-9a-fA-F]{40}")
_WHITESPACE: Final = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class KalturaSession:
    """What a KS says, as far as it could be read.

    ``user_id`` is None when it cannot be read (a v2 KS without a matching
    secret) or when a v1 KS stops before the user field. ``verified`` is
    True only when an admin secret proved the signature; an unverified v1
    KS is still read in full, so a caller decides how far to trust it.
    """

    version: int
    partner_id: int
    user_id: str | None
    session_type: int | None
    expiry: int | None
    privileges: str | None
    verified: bool

    @property
    def has_user(self) -> bool:
        """Whether the KS names a real user (not anonymous, not unknown)."""
        return self.user_id not in (None, "", "0")

    @property
    def is_widget(self) -> bool:
        """Whether this is an anonymous widget session, as the server judges.

        The server's test is a user session (type 0) with no user whose
        privileges contain the text ``widget:1``.
        """
        if self.session_type != SESSION_TYPE_USER or self.has_user:
            return False
        return self.privileges is not None and "widget:1" in self.privileges


def _aes_key(secret: bytes) -> bytes:
    return hashlib.sha1(secret).digest()[:16]


def _checked_secrets(secrets: Iterable[str], owner: str) -> tuple[str, ...]:
    if isinstance(secrets, str):
        msg = f"admin secrets for {owner} must be a collection, not a str"
        raise TypeError(msg)
    given = list(secrets)
    for index, secret in enumerate(given, start=1):
        if not isinstance(secret, str):
            raise TypeError(f"admin secret {index} for {owner} is not a str")
        if not secret:
            raise ValueError(f"admin secret {index} for {owner} is empty")
    return tuple(dict.fromkeys(given))


@dataclass(frozen=True, slots=True, repr=False)
class _Key:
    """One admin secret, prepared once for checking both KS formats."""

    v1_hash: HASH  # sha1 already fed with the secret; copied per check
    v2_cipher: Cipher[modes.CBC]

    @classmethod
    def prepare(cls, secret: str) -> _Key:
        raw = secret.encode()
        cipher = Cipher(algorithms.AES(_aes_key(raw)), modes.CBC(_ZERO_IV))
        return cls(hashlib.sha1(raw), cipher)


class AdminSecrets:
    """Partner admin secrets, for checking v1 and decrypting v2 sessions.

    Each partner may hold several secrets (the server allows a
    comma-separated list while one is being rotated), and some secrets may
    apply to any partner. Both kinds are tried, the partner's own first.
    The keys are derived here, once, so that parsing a KS does no setup.

    An instance is immutable and never shows a secret in its repr.
    """

    __slots__ = ("_any_keys", "_any_secrets", "_keys", "_secrets")

    EMPTY: ClassVar[AdminSecrets]

    _secrets: dict[int, tuple[str, ...]]
    _any_secrets: tuple[str, ...]
    _keys: dict[int, tuple[_Key, ...]]
    _any_keys: tuple[_Key, ...]

    def __init__(
        self,
        partners: Mapping[int, Iterable[str]] | None = None,
        *,
        any_partner: Iterable[str] = (),
    ) -> None:
        # validate and de-duplicate, keeping the order given
        any_secrets = _checked_secrets(any_partner, "any partner")
        by_partner = {
            partner_id: _checked_secrets(secrets, f"partner {partner_id}")
            for partner_id, secrets in (partners or {}).items()
        }
        combined = {
            partner_id: tuple(dict.fromkeys(own + any_secrets))
            for partner_id, own in by_partner.items()
            if own
        }

        # one prepared key per distinct secret, shared between partners
        everyone = dict.fromkeys(chain(any_secrets, *combined.values()))
        prepared = {secret: _Key.prepare(secret) for secret in everyone}
        keys = {
            partner_id: tuple(prepared[secret] for secret in secrets)
            for partner_id, secrets in combined.items()
        }

        # __setattr__ refuses every write, so the slots are filled past it
        set_slot = object.__setattr__
        set_slot(self, "_secrets", combined)
        set_slot(self, "_any_secrets", any_secrets)
        set_slot(self, "_keys", keys)
        set_slot(self, "_any_keys", tuple(prepared[s] for s in any_secrets))

    @classmethod
    def parse(cls, text: str, *, default_partner: int | None = None) -> AdminSecrets:
        """Read secrets from configuration text (an environment value or file).

        Entries are separated by newlines or commas. ``1234:secret`` is a
        secret for partner 1234; a bare ``secret`` belongs to
        ``default_partner``, or to every partner when that is None. Blank
        lines and lines starting with ``#`` are skipped.

        A malformed entry raises ValueError naming its position; the
        message never repeats the entry, which may hold a secret.
        """
        partners: dict[int, list[str]] = {}
        any_partner: list[str] = []
        position = 0

        for line_number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue

            for item in stripped.split(","):
                entry = item.strip()
                if not entry:
                    continue
                position += 1
                where = f"admin secrets entry {position} (line {line_number})"

                # split off the partner, if the entry names one
                head, colon, tail = entry.partition(":")
                partner_id = default_partner
                secret = entry
                if colon:
                    partner_text = head.strip()
                    if not _INTEGER.fullmatch(partner_text):
                        msg = f"{where}: the partner id is not an integer"
                        raise ValueError(msg)
                    partner_id = int(partner_text)
                    secret = tail.strip()

                if not secret:
                    raise ValueError(f"{where}: the secret is empty")
                if _WHITESPACE.search(secret):
                    raise ValueError(f"{where}: the secret contains whitespace")

                if partner_id is None:
                    any_partner.append(secret)
                else:
                    partners.setdefault(partner_id, []).append(secret)

        return cls(partners, any_partner=any_partner)

    def for_partner(self, partner_id: int) -> tuple[str, ...]:
        """The secrets to try for a partner: its own, then any-partner ones."""
        return self._secrets.get(partner_id, self._any_secrets)

    def _keys_for(self, partner_id: int) -> tuple[_Key, ...]:
        return self._keys.get(partner_id, self._any_keys)

    def __bool__(self) -> bool:
        return bool(self._secrets or self._any_secrets)

    def __repr__(self) -> str:
        partners = sorted(self._secrets)
        shared = len(self._any_secrets)
        return f"<AdminSecrets partners={partners} any_partner_secrets={shared}>"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AdminSecrets is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"AdminSecrets is immutable: cannot delete {name!r}")


AdminSecrets.EMPTY = AdminSecrets()
NO_SECRETS: Final = AdminSecrets.EMPTY


def parse_ks(text: str, secrets: AdminSecrets = NO_SECRETS) -> KalturaSession | None:
    """Read a KS, checking its signature with ``secrets`` when they allow.

    Returns None for anything that is not a well-formed KS; never raises.
    Both base64 alphabets are accepted, with or without ``=`` padding, but
    nothing else (no whitespace, no stray characters). Expiry is reported,
    not enforced.
    """
    # cheap refusals first: a KS is short, non-empty ASCII
    if not text or len(text) > MAX_KS_LENGTH or not text.isascii():
        return None

    raw = _decode_base64(text)
    if raw is None:
        return None
    if raw.startswith(_V2_MARK):
        return _parse_v2(raw, secrets)
    return _parse_v1(raw, secrets)


def make_ks_v1(
    *,
    partner_id: int,
    secret: str,
    user_id: str,
    session_type: int = SESSION_TYPE_USER,
    expiry: int,
    privileges: str = "",
    rand: int | None = None,
) -> str:
    """Build a v1 KS as the server and the Python client do.

    ``expiry`` is the absolute valid-until time in unix seconds; ``rand``
    is the random field (drawn when None). The result uses the standard
    base64 alphabet, padded.
    """
    _check_secret(secret)

    # the info fields have no escaping: a ';' would shift every later field
    if ";" in user_id:
        raise ValueError("KS v1 user_id must not contain ';'")
    if ";" in privileges:
        raise ValueError(f"KS v1 privileges must not contain ';': {privileges!r}")

    if rand is None:
        rand = randbelow(0x10000)
    head = f"{partner_id};{partner_id};{expiry};{session_type};{rand}"
    info = f"{head};{user_id};{privileges}".encode()
    signature = hashlib.sha1(secret.encode() + info).hexdigest().encode()
    return base64.b64encode(signature + b"|" + info).decode("ascii")


def make_ks_v2(
    *,
    partner_id: int,
    secret: str,
    user_id: str,
    session_type: int = SESSION_TYPE_USER,
    expiry: int,
    privileges: str = "",
    random_bytes: bytes | None = None,
) -> str:
    """Build a v2 KS as the server and the Python client do.

    ``expiry`` is the absolute expiry in unix seconds; ``random_bytes`` are
    the 16 bytes that make each KS unique (drawn when None). The fields are
    written privileges first, then ``_e``, ``_t`` and ``_u``, which is the
    server's order, so a KS made from the same inputs matches byte for
    byte. The result uses the urlsafe alphabet with ``=`` padding kept.
    """
    _check_secret(secret)
    if random_bytes is None:
        random_bytes = token_bytes(_RANDOM_SIZE)
    elif len(random_bytes) != _RANDOM_SIZE:
        size = len(random_bytes)
        msg = f"KS v2 random_bytes must be {_RANDOM_SIZE} bytes, not {size}"
        raise ValueError(msg)

    # the fields, as PHP http_build_query writes them
    fields = _v2_privilege_fields(privileges)
    fields[_V2_EXPIRY] = str(expiry)
    fields[_V2_TYPE] = str(session_type)
    fields[_V2_USER] = user_id
    query = "&".join(
        f"{_php_urlencode(name)}={_php_urlencode(value)}"
        for name, value in fields.items()
    )

    # sign, pad with NUL bytes to whole blocks, encrypt
    body = random_bytes + query.encode("ascii")
    plaintext = hashlib.sha1(body).digest() + body
    plaintext += bytes(-len(plaintext) % _BLOCK_SIZE)
    key = _aes_key(secret.encode())
    encryptor = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()

    decoded = _V2_MARK + str(partner_id).encode() + b"|" + ciphertext
    return base64.urlsafe_b64encode(decoded).decode("ascii")


def _parse_v1(raw: bytes, secrets: AdminSecrets) -> KalturaSession | None:
    signature, bar, info = raw.partition(b"|")
    if not bar or not _SHA1_HEX.fullmatch(signature):
        return None
    try:
        fields = info.decode("utf-8").split(";")
    except UnicodeDecodeError:
        return None
    if len(fields) < 3:
        return None
    partner_id = _to_int(fields[0])
    if partner_id is None:
        return None

    # the server compares lower-case hex exactly, so an upper-case
    # signature is read but never verified
    verified = False
    for key in secrets._keys_for(partner_id):
        digest = key.v1_hash.copy()
        digest.update(info)
        if hmac.compare_digest(digest.hexdigest().encode(), signature):
            verified = True
            break

    return KalturaSession(
        version=1,
        partner_id=partner_id,
        user_id=_field(fields, 5),
        session_type=_to_int(_field(fields, 3)),
        expiry=_to_int(fields[2]),
        privileges=_field(fields, 6),
        verified=verified,
    )


def _parse_v2(raw: bytes, secrets: AdminSecrets) -> KalturaSession | None:
    partner_text, bar, ciphertext = raw[len(_V2_MARK) :].partition(b"|")
    if not bar or not _INTEGER_BYTES.fullmatch(partner_text):
        return None
    size = len(ciphertext)
    if size < _MIN_V2_CIPHERTEXT or size % _BLOCK_SIZE:
        return None
    partner_id = int(partner_text)

    # the first secret whose key yields a matching hash is the signer
    for key in secrets._keys_for(partner_id):
        query = _open_v2(key, ciphertext)
        if query is not None:
            return _read_v2_fields(partner_id, query)

    return KalturaSession(
        version=2,
        partner_id=partner_id,
        user_id=None,
        session_type=None,
        expiry=None,
        privileges=None,
        verified=False,
    )


def _open_v2(key: _Key, ciphertext: bytes) -> bytes | None:
    """Decrypt and check a v2 payload; return its query string or None."""
    decryptor = key.v2_cipher.decryptor()
    plaintext = decryptor.update(ciphertext) + decryptor.finalize()
    plaintext = plaintext.rstrip(b"\0")

    digest, body = plaintext[:_SHA1_SIZE], plaintext[_SHA1_SIZE:]
    if len(body) < _RANDOM_SIZE:
        return None
    if not hmac.compare_digest(hashlib.sha1(body).digest(), digest):
        return None
    return body[_RANDOM_SIZE:]


def _read_v2_fields(partner_id: int, query: bytes) -> KalturaSession | None:
    try:
        parsed = parse_qs(
            query.decode("utf-8"), keep_blank_values=True, errors="strict"
        )
    except ValueError:  # UnicodeDecodeError is one
        return None

    # like PHP parse_str, a repeated key keeps its last value
    values = {name: found[-1] for name, found in parsed.items()}

    # privileges are rebuilt as the server does for v1 compatibility
    items = [
        f"{name}:{value}" if value else name
        for name, value in values.items()
        if name not in _V2_RESERVED
    ]
    privileges = ",".join(items)
    if privileges == "all:*":
        privileges = "*"

    return KalturaSession(
        version=2,
        partner_id=partner_id,
        user_id=values.get(_V2_USER),
        session_type=_to_int(values.get(_V2_TYPE)),
        expiry=_to_int(values.get(_V2_EXPIRY)),
        privileges=privileges,
        verified=True,
    )


def _decode_base64(text: str) -> bytes | None:
    """Strict base64 in either alphabet, padding optional."""
    data = text.translate(_TO_STANDARD_ALPHABET)
    if data.endswith("="):
        if len(data) % 4:
            return None
    else:
        data += "=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def _v2_privilege_fields(privileges: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in privileges.split(","):
        privilege = item.strip()
        if not privilege:
            continue
        if privilege == "*":
            privilege = "all:*"
        name, _, value = privilege.partition(":")
        if name in _V2_RESERVED:
            msg = f"KS v2 privilege {name!r} clashes with a session field"
            raise ValueError(msg)
        fields[name] = value
    return fields


def _php_urlencode(value: str) -> str:
    # PHP's urlencode leaves only letters, digits and "-_." alone; Python's
    # quote_plus also leaves "~" alone
    return quote_plus(value, safe="").replace("~", "%7E")


def _check_secret(secret: str) -> None:
    if not secret:
        raise ValueError("admin secret must not be empty")


def _field(fields: list[str], index: int) -> str | None:
    return fields[index] if index < len(fields) else None


def _to_int(text: str | None) -> int | None:
    if text is None or not _INTEGER.fullmatch(text):
        return None
    return int(text)
