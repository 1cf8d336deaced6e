"""Tests for proxy.kaltura.ks: reading, verifying and minting KS values."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.kaltura.ks import (
    MAX_KS_LENGTH,
    NO_SECRETS,
    AdminSecrets,
    KalturaSession,
    make_ks_v1,
    make_ks_v2,
    parse_ks,
)

PARTNER = 1234
SECRET = "testsecret"
USER = "alice@example.edu"
SECRETS = AdminSecrets.parse(f"{PARTNER}:{SECRET}")
WRONG_SECRETS = AdminSecrets.parse(f"{PARTNER}:not-the-secret")

# the fixture sessions were made at one moment, so they share an expiry; the
# v2 random bytes were read once from the fixture's decrypted payload
FIXTURE_EXPIRY = 1796373894
FIXTURE_V1_RAND = 33304
FIXTURE_V2_RANDOM = bytes.fromhex("389b72714c2876e97a9a152ebb4ce6a2")

SOME_SHA1 = "0" * 40
V1_HEAD = SOME_SHA1.encode() + b"|"


def _shared_dir() -> Path:
    """The project's shared directory, which sits beside the repository."""
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared"


@cache
def _python_ks() -> dict[str, Any]:
    path = _shared_dir() / "fixtures" / "python-ks.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _fixture_v1() -> str:
    return str(_python_ks()["ks_v1"]["ks"])


def _fixture_v2() -> str:
    return str(_python_ks()["ks_v2"]["ks"])


def _legacy_record(seq: int) -> dict[str, Any]:
    path = _shared_dir() / "fixtures" / "legacy-players.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        record: dict[str, Any] = json.loads(line)
        if record["seq"] == seq:
            return record
    raise LookupError(f"legacy-players.jsonl has no record {seq}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _seal_v2(query: bytes, *, secret: str = SECRET) -> str:
    """A v2 KS around an arbitrary payload, correctly signed."""
    body = bytes(16) + query
    plaintext = hashlib.sha1(body).digest() + body
    plaintext += bytes(-len(plaintext) % 16)
    key = hashlib.sha1(secret.encode()).digest()[:16]
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    sealed = encryptor.update(plaintext) + encryptor.finalize()
    return base64.urlsafe_b64encode(b"v2|1234|" + sealed).decode("ascii")


# --- the fixture sessions made by the official Python client -------------


def test_fixture_v1_is_read_in_full_without_a_secret() -> None:
    session = parse_ks(_fixture_v1())

    assert session == KalturaSession(
        version=1,
        partner_id=PARTNER,
        user_id=USER,
        session_type=0,
        expiry=FIXTURE_EXPIRY,
        privileges="",
        verified=False,
    )
    assert session.has_user
    assert not session.is_widget


def test_fixture_v1_is_verified_with_the_admin_secret() -> None:
    session = parse_ks(_fixture_v1(), SECRETS)

    assert session is not None
    assert session.verified
    assert session.user_id == USER


def test_fixture_v1_with_a_wrong_secret_is_unverified_but_still_read() -> None:
    session = parse_ks(_fixture_v1(), WRONG_SECRETS)

    assert session is not None
    assert not session.verified
    assert session.user_id == USER
    assert session.partner_id == PARTNER


def test_fixture_v1_is_not_verified_by_another_partners_secret() -> None:
    session = parse_ks(_fixture_v1(), AdminSecrets.parse(f"99:{SECRET}"))

    assert session is not None
    assert not session.verified


def test_fixture_v2_is_decrypted_with_the_admin_secret() -> None:
    session = parse_ks(_fixture_v2(), SECRETS)

    assert session is not None
    assert session.version == 2
    assert session.partner_id == PARTNER
    assert session.user_id == USER
    assert session.session_type == 0
    assert session.expiry == FIXTURE_EXPIRY
    assert session.privileges is not None
    assert "sview:*" in session.privileges.split(",")
    assert session.verified


def test_fixture_v2_with_a_wrong_secret_names_only_its_partner() -> None:
    session = parse_ks(_fixture_v2(), WRONG_SECRETS)

    assert session == KalturaSession(
        version=2,
        partner_id=PARTNER,
        user_id=None,
        session_type=None,
        expiry=None,
        privileges=None,
        verified=False,
    )
    assert not session.has_user
    assert not session.is_widget


def test_fixture_v2_without_secrets_names_only_its_partner() -> None:
    session = parse_ks(_fixture_v2())

    assert session is not None
    assert session.version == 2
    assert session.partner_id == PARTNER
    assert session.user_id is None
    assert not session.verified


def test_fixture_v2_is_decrypted_by_a_secret_for_any_partner() -> None:
    session = parse_ks(_fixture_v2(), AdminSecrets.parse(SECRET))

    assert session is not None
    assert session.verified
    assert session.user_id == USER


def test_fixture_v2_is_decrypted_by_the_second_of_rotated_secrets() -> None:
    secrets = AdminSecrets.parse(f"{PARTNER}:old-secret,{PARTNER}:{SECRET}")

    session = parse_ks(_fixture_v2(), secrets)

    assert session is not None
    assert session.verified


def test_fixture_v2_is_read_in_the_standard_alphabet_without_padding() -> None:
    urlsafe = _fixture_v2()
    assert "-" in urlsafe and "_" in urlsafe and urlsafe.endswith("=")
    standard = urlsafe.replace("-", "+").replace("_", "/").rstrip("=")

    session = parse_ks(standard, SECRETS)

    assert session == parse_ks(urlsafe, SECRETS)


def test_tampered_v2_ciphertext_is_not_verified() -> None:
    raw = bytearray(base64.urlsafe_b64decode(_fixture_v2()))
    raw[-20] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode("ascii")

    session = parse_ks(tampered, SECRETS)

    assert session is not None
    assert not session.verified
    assert session.user_id is None


def test_upper_case_v1_signature_is_read_but_not_verified() -> None:
    decoded = base64.b64decode(_fixture_v1())
    signature, _, info = decoded.partition(b"|")
    shouted = _b64(signature.upper() + b"|" + info)

    session = parse_ks(shouted, SECRETS)

    assert session is not None
    assert session.user_id == USER
    assert not session.verified


# --- widget sessions -----------------------------------------------------


def test_widget_ks_of_legacy_record_7_is_an_anonymous_widget_session() -> None:
    query = _legacy_record(7)["query_string"]
    ks = parse_qs(query)["ks"][0]
    assert ks.endswith("=")

    session = parse_ks(ks)

    assert session is not None
    assert session.version == 1
    assert session.partner_id == PARTNER
    assert session.user_id == "0"
    assert session.privileges == "view:*,widget:1"
    assert session.is_widget
    assert not session.has_user


@pytest.mark.parametrize(
    ("user_id", "session_type", "privileges", "is_widget"),
    [
        ("0", 0, "view:*,widget:1", True),
        ("", 0, "widget:1", True),
        ("0", 0, "view:*", False),
        ("0", 2, "view:*,widget:1", False),
        ("bob", 0, "view:*,widget:1", False),
    ],
)
def test_is_widget_needs_user_type_no_user_and_widget_privilege(
    user_id: str, session_type: int, privileges: str, is_widget: bool
) -> None:
    ks = make_ks_v1(
        partner_id=PARTNER,
        secret=SECRET,
        user_id=user_id,
        session_type=session_type,
        expiry=FIXTURE_EXPIRY,
        privileges=privileges,
    )

    session = parse_ks(ks)

    assert session is not None
    assert is_widget == session.is_widget


@pytest.mark.parametrize(("user_id", "has_user"), [("0", False), ("", False)])
def test_v2_anonymous_user_ids_are_read_but_are_no_users(
    user_id: str, has_user: bool
) -> None:
    ks = make_ks_v2(partner_id=PARTNER, secret=SECRET, user_id=user_id, expiry=1)

    session = parse_ks(ks, SECRETS)

    assert session is not None
    assert user_id == session.user_id
    assert has_user == session.has_user


def test_v1_without_a_user_field_has_no_user() -> None:
    ks = _b64(f"{SOME_SHA1}|1234;1234;{FIXTURE_EXPIRY}".encode())

    session = parse_ks(ks)

    assert session is not None
    assert session.user_id is None
    assert session.session_type is None
    assert not session.has_user


# --- minting ---------------------------------------------------------------


def test_make_ks_v1_matches_the_python_client_byte_for_byte() -> None:
    ks = make_ks_v1(
        partner_id=PARTNER,
        secret=SECRET,
        user_id=USER,
        expiry=FIXTURE_EXPIRY,
        rand=FIXTURE_V1_RAND,
    )

    assert _fixture_v1() == ks


def test_make_ks_v2_matches_the_python_client_byte_for_byte() -> None:
    ks = make_ks_v2(
        partner_id=PARTNER,
        secret=SECRET,
        user_id=USER,
        expiry=FIXTURE_EXPIRY,
        privileges="sview:*",
        random_bytes=FIXTURE_V2_RANDOM,
    )

    assert _fixture_v2() == ks


ROUND_TRIP_USERS = [
    "alice@example.edu",
    "Jane Q. Public",
    "  padded  user@example.edu ",
    "a+b&c=d%e/f~g|h",
    "名前@例え.jp",
]


@pytest.mark.parametrize("user_id", ROUND_TRIP_USERS)
def test_make_ks_v1_round_trips_through_parse_ks(user_id: str) -> None:
    ks = make_ks_v1(
        partner_id=PARTNER,
        secret=SECRET,
        user_id=user_id,
        session_type=2,
        expiry=FIXTURE_EXPIRY,
        privileges="sview:*,list:0_abc/0_def",
    )

    session = parse_ks(ks, SECRETS)

    assert session == KalturaSession(
        version=1,
        partner_id=PARTNER,
        user_id=user_id,
        session_type=2,
        expiry=FIXTURE_EXPIRY,
        privileges="sview:*,list:0_abc/0_def",
        verified=True,
    )


@pytest.mark.parametrize("user_id", ROUND_TRIP_USERS)
def test_make_ks_v2_round_trips_through_parse_ks(user_id: str) -> None:
    ks = make_ks_v2(
        partner_id=PARTNER,
        secret=SECRET,
        user_id=user_id,
        session_type=2,
        expiry=FIXTURE_EXPIRY,
        privileges="sview:*,list:0_abc/0_def,enableentitlement",
    )

    session = parse_ks(ks, SECRETS)

    assert session == KalturaSession(
        version=2,
        partner_id=PARTNER,
        user_id=user_id,
        session_type=2,
        expiry=FIXTURE_EXPIRY,
        privileges="sview:*,list:0_abc/0_def,enableentitlement",
        verified=True,
    )


def test_make_ks_v2_stores_the_all_privilege_and_reads_it_back() -> None:
    ks = make_ks_v2(
        partner_id=PARTNER,
        secret=SECRET,
        user_id=USER,
        expiry=FIXTURE_EXPIRY,
        privileges="*",
        random_bytes=bytes(16),
    )

    decoded = base64.urlsafe_b64decode(ks)
    session = parse_ks(ks, SECRETS)

    assert decoded.startswith(b"v2|1234|")
    assert session is not None
    assert session.privileges == "*"


def test_make_ks_v2_draws_fresh_random_bytes_each_time() -> None:
    made = {
        make_ks_v2(partner_id=PARTNER, secret=SECRET, user_id=USER, expiry=1)
        for _ in range(2)
    }

    assert len(made) == 2


def test_an_expired_ks_is_still_read_and_verified() -> None:
    ks = make_ks_v1(partner_id=PARTNER, secret=SECRET, user_id=USER, expiry=1)

    session = parse_ks(ks, SECRETS)

    assert session is not None
    assert session.verified
    assert session.expiry == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"secret": ""}, "admin secret must not be empty"),
        ({"user_id": "a;b"}, "user_id must not contain ';'"),
        ({"privileges": "a;b"}, "privileges must not contain ';'"),
    ],
)
def test_make_ks_v1_refuses_values_it_cannot_encode(
    arguments: dict[str, str], message: str
) -> None:
    fields: dict[str, Any] = {
        "partner_id": PARTNER,
        "secret": SECRET,
        "user_id": USER,
        "expiry": 1,
    }

    with pytest.raises(ValueError, match=message):
        make_ks_v1(**(fields | arguments))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"secret": ""}, "admin secret must not be empty"),
        ({"random_bytes": b"short"}, "must be 16 bytes, not 5"),
        ({"privileges": "_u:mallory"}, "'_u' clashes with a session field"),
    ],
)
def test_make_ks_v2_refuses_values_it_cannot_encode(
    arguments: dict[str, Any], message: str
) -> None:
    fields: dict[str, Any] = {
        "partner_id": PARTNER,
        "secret": SECRET,
        "user_id": USER,
        "expiry": 1,
    }

    with pytest.raises(ValueError, match=message):
        make_ks_v2(**(fields | arguments))


# --- malformed input -------------------------------------------------------


def _bad_inputs() -> list[tuple[str, str]]:
    v1 = _fixture_v1()
    v2 = _fixture_v2()
    table = [
        ("empty", ""),
        ("too short", "abc"),
        ("over the length limit", "A" * 5000),
        ("just over the length limit", "A" * (MAX_KS_LENGTH + 1)),
        ("not base64", "!!!not*base64!!!"),
        ("base64 with a space", v1[:20] + " " + v1[20:]),
        ("base64 with a newline", v1[:20] + "\n" + v1[20:]),
        ("padding in the middle", "ab=c" + v1),
        ("wrong padding", v1.rstrip("=") + "="),
        ("non-ASCII text", v1[:-4] + "é==="),
        ("one char past a block", v1 + "A"),
        ("v1 not UTF-8", _b64(V1_HEAD + b"1234;1234;1;0;1;\xff\xfe")),
        ("v1 non-hex hash", _b64(b"z" * 40 + b"|1234;1234;1;0;1;bob;")),
        ("v1 short hash", _b64(b"abc|1234;1234;1;0;1;bob;")),
        ("v1 without a bar", _b64(b"1234;1234;1;0;1;bob;")),
        ("v1 two fields", _b64(V1_HEAD + b"1234;1234")),
        ("v1 partner not a number", _b64(V1_HEAD + b"abc;abc;1;0")),
        ("v1 partner with spaces", _b64(V1_HEAD + b" 12;12;1;0")),
        ("v2 partner not a number", _b64(b"v2|notanumber|xx")),
        ("v2 without a second bar", _b64(b"v2|1234")),
        ("v2 empty ciphertext", _b64(b"v2|1234|")),
        ("v2 ciphertext of 17 bytes", _b64(b"v2|1234|" + bytes(17))),
        ("v2 ciphertext of 50 bytes", _b64(b"v2|1234|" + bytes(50))),
        ("v2 ciphertext of one block", _b64(b"v2|1234|" + bytes(16))),
    ]
    for length in (1, 10, 30, 57):
        table.append((f"v1 cut to {length}", v1[:length]))
    for length in (3, 12, 50, len(v2) - 4):
        table.append((f"v2 cut to {length}", v2[:length]))
    return table


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize(
    "text", [text for _, text in BAD_INPUTS], ids=[name for name, _ in BAD_INPUTS]
)
def test_malformed_ks_is_none(text: str) -> None:
    assert parse_ks(text) is None
    assert parse_ks(text, SECRETS) is None


def test_signed_v2_whose_fields_are_not_utf8_is_none() -> None:
    ks = _seal_v2(b"_e=1&_t=0&_u=%FF%FE")

    assert parse_ks(ks, SECRETS) is None


def test_parse_ks_never_raises_on_mutated_sessions() -> None:
    rng = random.Random(20240601)
    alphabet = string.ascii_letters + string.digits + "+/-_=|;é\0"
    seeds = [_fixture_v1(), _fixture_v2(), _seal_v2(b"_u=x")]

    for _ in range(3000):
        text = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(text))
            action = rng.randrange(3)
            if action == 0:
                text[position] = rng.choice(alphabet)
            elif action == 1:
                del text[position:]
            else:
                text.insert(position, rng.choice(alphabet))
            if not text:
                break
        result = parse_ks("".join(text), SECRETS)
        assert result is None or isinstance(result, KalturaSession)


# --- admin secrets -----------------------------------------------------------


def test_admin_secrets_parse_reads_lines_commas_and_comments() -> None:
    text = """
        # production
        1234:first, 1234:second
        5678:other

        shared
    """

    secrets = AdminSecrets.parse(text)

    assert secrets.for_partner(1234) == ("first", "second", "shared")
    assert secrets.for_partner(5678) == ("other", "shared")
    assert secrets.for_partner(42) == ("shared",)
    assert secrets


def test_admin_secrets_bare_secret_belongs_to_the_default_partner() -> None:
    secrets = AdminSecrets.parse("only-mine", default_partner=1234)

    assert secrets.for_partner(1234) == ("only-mine",)
    assert secrets.for_partner(5678) == ()


def test_admin_secrets_drop_repeated_secrets() -> None:
    secrets = AdminSecrets.parse("1234:a,1234:a,a")

    assert secrets.for_partner(1234) == ("a",)


def test_no_secrets_are_empty_and_falsy() -> None:
    assert NO_SECRETS is AdminSecrets.EMPTY
    assert not NO_SECRETS
    assert not AdminSecrets.parse("# nothing here\n\n")
    assert NO_SECRETS.for_partner(1234) == ()


def test_admin_secrets_are_immutable() -> None:
    name = "_secrets"

    with pytest.raises(AttributeError, match="immutable"):
        setattr(SECRETS, name, {})


def test_admin_secrets_repr_shows_no_secret() -> None:
    text = repr(AdminSecrets.parse("1234:hunter2,hunter3"))

    assert "hunter" not in text
    assert "1234" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc:s3cr3t-value", r"entry 1 \(line 1\): the partner id is not an"),
        ("1234:", r"entry 1 \(line 1\): the secret is empty"),
        (" :s3cr3t-value", r"entry 1 \(line 1\): the partner id is not an"),
        ("1234:good\n\n12x4:s3cr3t-value", r"entry 2 \(line 3\)"),
        ("1234:good, 99:s3cr3t value", r"entry 2 \(line 1\): .* whitespace"),
    ],
)
def test_admin_secrets_parse_errors_name_the_entry_not_the_secret(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        AdminSecrets.parse(text)

    assert "s3cr3t" not in str(caught.value)
    assert "good" not in str(caught.value)


def test_admin_secrets_refuse_a_string_where_a_collection_belongs() -> None:
    with pytest.raises(TypeError, match="partner 1234 must be a collection"):
        AdminSecrets({1234: "testsecret"})


def test_admin_secrets_refuse_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="secret 2 for partner 1234 is empty"):
        AdminSecrets({1234: ["testsecret", ""]})
