"""JWT verification without a server: key loading (WS_JWT_PUBLIC_KEY), pinned algorithms,
audience and issuer, and the identity a token's claims give (user_id, channels, subs, roles).
The live handshake and the JWKS endpoint are in tests/security/test_jwt_keys.py."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from server.auth import (
    Identity,
    JwtVerifier,
    TokenRejected,
    identity_from_claims,
    load_public_key,
)
from server.config import Settings
from server.errors import ConfigError
from tests.jwt_tools import (
    HS_SECRET,
    ec_key,
    forge_hs256,
    private_pem,
    public_pem,
    rsa_key,
    token,
)

# --- WS_JWT_PUBLIC_KEY -----------------------------------------------------------------------


def certificate_pem(key: Any) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_public_keys_load_inline_escaped_from_a_file_or_from_a_certificate(tmp_path: Path
                                                                           ) -> None:
    pem = public_pem(rsa_key())
    path = tmp_path / "key.pem"
    path.write_text(pem)
    for value in (pem, pem.replace("\n", "\\n"), str(path), certificate_pem(rsa_key())):
        algorithm, key = load_public_key(value)
        assert algorithm == "RS256"
        assert key.public_numbers() == rsa_key().public_key().public_numbers()
    assert load_public_key(public_pem(ec_key()))[0] == "ES256"


@pytest.mark.parametrize(("value", "why"), [
    (lambda: private_pem(rsa_key()), "private key"),
    (lambda: public_pem(rsa_key("small", 1024)), "1024 bits: at least 2048"),
    (lambda: public_pem(ec_key("p384", "P-384")), "unsupported key"),
    (lambda: "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----", "not a PEM"),
    (lambda: "/nonexistent/key.pem", "cannot read /nonexistent/key.pem"),
])
def test_unusable_public_keys_stop_start_up_naming_the_setting(value: Any, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"WS_AUTH": "jwt", "WS_JWT_PUBLIC_KEY": value()})
    assert caught.value.message.startswith("WS_JWT_PUBLIC_KEY: ")
    assert why in caught.value.message


@pytest.mark.parametrize(("env", "expected"), [
    ({"WS_AUTH": "jwt"}, "WS_JWT_SECRET: WS_AUTH=jwt needs WS_JWT_SECRET (HS256), "
                         "WS_JWT_PUBLIC_KEY or WS_JWKS_URL"),
    ({"WS_AUTH": "jwt", "WS_JWKS_URL": "http://idp.example.com/jwks"},
     "WS_JWKS_URL: must be https://"),
    ({"WS_AUTH": "jwt", "WS_JWKS_URL": "ftp://idp.example.com/jwks"}, "WS_JWKS_URL: expected"),
    ({"WS_AUTH": "jwt", "WS_JWKS_URL": "https://idp.example.com/jwks",
      "WS_JWT_PUBLIC_KEY": "/k.pem"}, "either WS_JWT_PUBLIC_KEY or WS_JWKS_URL"),
    ({"WS_AUTH": "jwt", "WS_JWKS_URL": "https://idp.example.com/jwks",
      "WS_JWKS_CACHE_TTL": "1"}, "WS_JWKS_CACHE_TTL: must be between 10"),
])
def test_jwt_settings_are_checked_at_start_up(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert expected in caught.value.message


def test_jwks_over_plain_http_is_accepted_on_loopback_and_lists_parse() -> None:
    settings = Settings.from_env({"WS_AUTH": "jwt", "WS_JWKS_URL": "http://127.0.0.1:1/jwks",
                                  "WS_JWT_AUDIENCE": "app, admin", "WS_JWT_ISSUER": "idp"})
    assert settings.ws_jwt_audience == ("app", "admin")
    assert settings.ws_jwt_issuer == ("idp",)
    assert "BEGIN" not in repr(Settings(ws_jwt_public_key=public_pem(rsa_key())))
    assert Settings(ws_jwt_public_key="x").public_dict()["ws_jwt_public_key"] is True


# --- verification ----------------------------------------------------------------------------

def verifier(**overrides: Any) -> JwtVerifier:
    return JwtVerifier(Settings(ws_auth="jwt", **overrides))


async def rejected(v: JwtVerifier, presented: str) -> str:
    with pytest.raises(TokenRejected) as caught:
        await v.verify(presented)
    assert caught.value.http_status == 401
    return caught.value.message


async def test_rs256_and_es256_with_a_pem_and_hs256_with_the_secret() -> None:
    rs = verifier(ws_jwt_public_key=public_pem(rsa_key()), ws_jwt_secret=HS_SECRET)
    assert rs.algorithms == ("HS256", "RS256")
    assert (await rs.verify(token(rsa_key(), "RS256"))).user_id == "alice"
    assert (await rs.verify(token(HS_SECRET, "HS256", sub="bob"))).user_id == "bob"
    es = verifier(ws_jwt_public_key=public_pem(ec_key()))
    assert (await es.verify(token(ec_key(), "ES256"))).subject == "alice"


async def test_algorithms_are_pinned_to_the_configured_keys() -> None:
    pem = public_pem(rsa_key())
    only_rsa = verifier(ws_jwt_public_key=pem)
    # HS/RS confusion: an HS256 token "signed" with the public key that everybody has
    forged = forge_hs256({"sub": "admin", "exp": 2**31}, pem.encode())
    assert "algorithm 'HS256' is not accepted (accepted: RS256)" in await rejected(
        only_rsa, forged)
    # and with the secret configured too, HS256 is checked against the secret only
    both = verifier(ws_jwt_public_key=pem, ws_jwt_secret=HS_SECRET)
    assert "Signature verification failed" in await rejected(both, forged)
    unsigned = jwt.encode({"sub": "admin", "exp": 2**31}, None, algorithm="none")
    assert "algorithm 'none' is not accepted" in await rejected(both, unsigned)
    assert "'ES256' is not accepted" in await rejected(only_rsa, token(ec_key(), "ES256"))
    assert "'RS512' is not accepted" in await rejected(only_rsa, token(rsa_key(), "RS512"))
    # a token signed by another RSA key
    assert "Signature verification failed" in await rejected(
        only_rsa, token(rsa_key("other"), "RS256"))


@pytest.mark.parametrize(("claims", "message"), [
    ({"aud": "app", "iss": "https://idp.test"}, None),
    ({"aud": ["other", "app"], "iss": "https://idp.test"}, None),
    ({"aud": "other", "iss": "https://idp.test"}, "Audience doesn't match"),
    ({"iss": "https://idp.test"}, 'Token is missing the "aud" claim'),
    ({"aud": "app", "iss": "https://evil.test"}, "Invalid issuer"),
    ({"aud": "app"}, 'Token is missing the "iss" claim'),
])
async def test_audience_and_issuer(claims: dict[str, Any], message: str | None) -> None:
    v = verifier(ws_jwt_secret=HS_SECRET, ws_jwt_audience=("app", "admin"),
                 ws_jwt_issuer=("https://idp.test",))
    presented = token(HS_SECRET, "HS256", **claims)
    if message is None:
        assert (await v.verify(presented)).user_id == "alice"
    else:
        assert message in await rejected(v, presented)


async def test_a_token_with_aud_needs_ws_jwt_audience() -> None:
    message = await rejected(verifier(ws_jwt_secret=HS_SECRET),
                             token(HS_SECRET, "HS256", aud="app"))
    assert "set WS_JWT_AUDIENCE" in message


async def test_expired_and_garbage_tokens() -> None:
    v = verifier(ws_jwt_secret=HS_SECRET)
    with pytest.raises(TokenRejected) as caught:
        await v.verify(token(HS_SECRET, "HS256", exp_in=-10))
    assert caught.value.code == "token_expired"
    assert "invalid token" in await rejected(v, "not.a.jwt")
    assert "exp" in await rejected(v, token(HS_SECRET, "HS256", exp_in=None))
    assert "sub" in await rejected(v, token(HS_SECRET, "HS256", sub=None))


# --- identity claims -------------------------------------------------------------------------

def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": 2**31, **extra}


def test_identity_of_a_plain_token() -> None:
    identity = identity_from_claims(claims())
    assert identity == Identity(subject="alice", expires_at=float(2**31), verified=True,
                                user_id="alice", authenticated=True)
    assert not identity.observer


def test_channels_claim_as_a_list_or_with_subs_and_roles() -> None:
    listed = identity_from_claims(claims(channels=["team:42", "user:{user}"]))
    assert listed.channels == ("team:42", "user:{user}") and listed.subs == ()
    shaped = identity_from_claims(claims(
        channels={"allow": ["team:*"], "subs": ["team:42", "news"]}, roles=["observer", "x"]))
    assert shaped.channels == ("team:*",)
    assert shaped.subs == ("team:42", "news")
    assert shaped.roles == frozenset({"observer", "x"}) and shaped.observer
    assert identity_from_claims(claims(roles="observer")).observer
    assert identity_from_claims(claims(channels={"subs": ["a"]})).channels == ()


@pytest.mark.parametrize(("extra", "why"), [
    ({"channels": "team:42"}, "channels claim must be a list of strings"),
    ({"channels": [1]}, "entries must be strings"),
    ({"channels": [""]}, "entries must be strings of 1-256"),
    ({"channels": ["x"] * 257}, "more than 256 entries"),
    ({"channels": ["a:{userid}"]}, "the only placeholder is {user}"),
    ({"channels": {"allow": [], "join": []}}, "unknown key 'join'"),
    ({"channels": {"subs": "a"}}, "channels.subs claim must be a list"),
    ({"roles": {"admin": True}}, "roles claim must be a list"),
    ({"sub": "../etc"}, "sub must be a client id"),
])
def test_malformed_identity_claims_refuse_the_token(extra: dict[str, Any], why: str) -> None:
    with pytest.raises(TokenRejected) as caught:
        identity_from_claims(claims(**extra))
    assert why in caught.value.message
