"""Signed session tokens: which tokens yield their claim, and which nothing.

Tokens are made with PyJWT and keys made with cryptography, as an SSO
gateway would; the rules are loaded from real files, so the tests cover
the ``[jwt]`` section's checks as well as the claim it reads.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.kaltura.events import EventView, ParamStore
from proxy.kaltura.fields import Api, Field
from proxy.kaltura.params import QueryParams
from proxy.rules.context import SourceContext
from proxy.rules.loader import RulesError, load_rules

HS_SECRET = "a-shared-secret-of-at-least-32-bytes!"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        .decode()
    )


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "erin@example.edu", "exp": now + 600, "iat": now, **changes}


def write_rules(tmp_path: Path, section: str, source: str = "") -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(
        f"""
[[rule]]
name = "sso"
userId = [{{ cookie = "sso", decode = "jwt", jwt = "campus"{source} }}]

[jwt.campus]
{section}
"""
    )
    return path


def user_from(rules_path: Path, token: str) -> str | None:
    """What the rule's source yields for a request carrying ``token``."""
    rules = load_rules(rules_path)
    (source,) = rules.rules[0].sources[Field.USER_ID]
    params = QueryParams("service=stats&action=collect")
    event = EventView(
        Api.STATS, (ParamStore(params, "event:"),), ParamStore(params, "event:")
    )
    headers = CIMultiDictProxy(CIMultiDict({"Cookie": f"theme=1; sso={token}"}))
    context = SourceContext(
        headers, "h", "/api_v3/", (params,), event, None, lambda k: None
    )
    return source.extract(context)


@pytest.fixture(name="hs_rules")
def _hs_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KSTATS_TEST_JWT", HS_SECRET)
    return write_rules(tmp_path, 'algorithms = ["HS256"]\nkey_env = "KSTATS_TEST_JWT"')


def test_an_hs256_token_yields_its_subject(hs_rules: Path) -> None:
    token = jwt.encode(claims(), HS_SECRET, algorithm="HS256")
    assert "erin@example.edu" == user_from(hs_rules, token)


def test_an_rs256_token_checked_with_the_public_key_file_yields_its_subject(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    (tmp_path / "sso.pem").write_text(public_pem(rsa_key))
    rules = write_rules(tmp_path, 'algorithms = ["RS256"]\nkey_file = "sso.pem"')
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert "erin@example.edu" == user_from(rules, token)


def test_another_claim_can_be_named(hs_rules: Path) -> None:
    hs_rules.write_text(
        hs_rules.read_text().replace('jwt = "campus"', 'jwt = "campus", claim = "eppn"')
    )
    token = jwt.encode(claims(eppn="erin"), HS_SECRET, algorithm="HS256")
    assert "erin" == user_from(hs_rules, token)


@pytest.mark.parametrize(
    ("why", "make"),
    [
        (
            "signed with another secret",
            lambda: jwt.encode(claims(), "x" * 40, algorithm="HS256"),
        ),
        (
            "expired",
            lambda: jwt.encode(
                claims(exp=int(time.time()) - 5), HS_SECRET, algorithm="HS256"
            ),
        ),
        (
            "not yet valid",
            lambda: jwt.encode(
                claims(nbf=int(time.time()) + 300), HS_SECRET, algorithm="HS256"
            ),
        ),
        ("unsigned (alg none)", lambda: jwt.encode(claims(), None, algorithm="none")),
        ("not a token", lambda: "not.a.token"),
        (
            "its payload altered",
            lambda: _altered(jwt.encode(claims(), HS_SECRET, algorithm="HS256")),
        ),
    ],
)
def test_a_token_that_does_not_hold_yields_nothing(
    hs_rules: Path, why: str, make: Any
) -> None:
    assert user_from(hs_rules, make()) is None, why


def _altered(token: str) -> str:
    head, payload, signature = token.split(".")
    forged = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b"erin", b"evil")
    ).decode()
    return f"{head}.{forged}.{signature}"


def test_an_rs256_section_refuses_a_token_signed_hs256_with_its_public_key(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    # the key confusion attack: the public key used as a shared secret
    pem = public_pem(rsa_key)
    (tmp_path / "sso.pem").write_text(pem)
    rules = write_rules(tmp_path, 'algorithms = ["RS256"]\nkey_file = "sso.pem"')
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(
        b'{"sub":"mallory","exp":%d}' % (int(time.time()) + 60)
    ).decode()
    signature = jwt.utils.base64url_encode(
        hmac.new(pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    ).decode()
    assert user_from(rules, f"{header}.{payload}.{signature}") is None


def test_verify_false_skips_the_signature_but_not_the_expiry(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, 'algorithms = ["HS256"]\nverify = false')
    good = jwt.encode(
        claims(), "whatever-secret-the-gateway-holds!!", algorithm="HS256"
    )
    old = jwt.encode(
        claims(exp=int(time.time()) - 5),
        "whatever-secret-the-gateway-holds!!",
        algorithm="HS256",
    )
    assert "erin@example.edu" == user_from(rules, good)
    assert user_from(rules, old) is None


def test_audience_and_issuer_must_match_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KSTATS_TEST_JWT", HS_SECRET)
    rules = write_rules(
        tmp_path,
        'algorithms = ["HS256"]\nkey_env = "KSTATS_TEST_JWT"\n'
        'audience = "kaltura-stats"\nissuer = "https://sso.example.edu"',
    )
    right = claims(aud="kaltura-stats", iss="https://sso.example.edu")
    wrong = claims(aud="another-app", iss="https://sso.example.edu")
    assert "erin@example.edu" == user_from(
        rules, jwt.encode(right, HS_SECRET, algorithm="HS256")
    )
    assert user_from(rules, jwt.encode(wrong, HS_SECRET, algorithm="HS256")) is None


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            'algorithms = ["HS256"]',
            "give 'key_file' or 'key_env' for the signature check",
        ),
        (
            'algorithms = ["HS256", "RS256"]\nverify = false',
            "mixes shared-secret (HS) and public-key algorithms",
        ),
        ('algorithms = ["none"]\nverify = false', "algorithms: expected a list of"),
        (
            'algorithms = ["HS256"]\nkey_env = "KSTATS_UNSET_VARIABLE"',
            "environment variable 'KSTATS_UNSET_VARIABLE' is not set",
        ),
        ('algorithms = ["RS256"]\nkey_file = "absent.pem"', "key_file: cannot read"),
        (
            'algorithms = ["HS256"]\nverify = "no"',
            "verify: expected true or false, got 'no'",
        ),
    ],
)
def test_each_mistake_in_a_jwt_section_is_reported(
    tmp_path: Path, section: str, expected: str
) -> None:
    with pytest.raises(RulesError) as raised:
        load_rules(write_rules(tmp_path, section))
    assert any(
        "rules.toml: jwt 'campus'" in problem and expected in problem
        for problem in raised.value.problems
    ), raised.value.problems


def test_a_jwt_source_must_name_a_section(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rule]]\nname = "sso"\nuserId = [{ cookie = "sso", decode = "jwt" }]\n'
    )
    with pytest.raises(RulesError) as raised:
        load_rules(path)
    assert "decode = 'jwt' needs jwt = NAME" in raised.value.problems[0]


def test_junk_tokens_cannot_push_a_valid_one_out(hs_rules: Path) -> None:
    from proxy.rules.tokens import MAX_REFUSED

    rules = load_rules(hs_rules)
    (source,) = rules.rules[0].sources[Field.USER_ID]
    claim = source.token  # type: ignore[attr-defined]
    good = jwt.encode(claims(), HS_SECRET, algorithm="HS256")
    assert "erin@example.edu" == claim.read(good)

    for number in range(MAX_REFUSED * 3):
        assert claim.read(f"junk.{number}.token") is None

    assert len(claim._refused) == MAX_REFUSED
    assert good.encode() not in b"".join(claim._kept)  # kept by digest only
    assert "erin@example.edu" == claim.read(good)
    assert 1 == len(claim._kept)
