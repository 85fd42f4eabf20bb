"""Real keys and tokens for the JWT tests: RSA and EC key pairs (made once per run), their
PEMs and JWKs, and tokens signed with them by PyJWT itself."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

HS_SECRET = "jwt-test-secret-" + "0123456789abcdef" * 4


@functools.cache
def rsa_key(name: str = "a", bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str = "a", curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())


def public_pem(key: Any) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key, as a JWKS endpoint publishes it."""
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) \
        else jwt.algorithms.ECAlgorithm
    data = algorithm.to_jwk(key.public_key(), as_dict=True)
    data.update({"kid": kid, "use": "sig"})
    data.update(extra)
    return data


def token(key: Any, algorithm: str, *, kid: str | None = None, sub: Any = "alice",
          exp_in: float | None = 3600, **claims: Any) -> str:
    payload: dict[str, Any] = dict(claims)
    if sub is not None:
        payload["sub"] = sub
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def forge_hs256(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand, as an attacker would for the HS/RS confusion (PyJWT itself
    refuses to use a PEM as an HMAC secret)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + \
        b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()
