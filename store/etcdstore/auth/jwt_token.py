"""JWT tokens (--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...), as etcd 3.4.

A token is a JWS over {"exp", "revision", "username"} (Go's JSON key order), signed with the
member's private key; every member configured with the public key verifies any member's
token, so JWT works across the cluster. A member given only a public key verifies but cannot
issue tokens ("verify-only"). Verified tokens are cached until they expire: an RSA/ECDSA
verification costs far more than the rest of a request.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import load_pem_x509_certificate

from etcdstore import errors
from etcdstore.auth.tokens import INVALID_AUTH_OPTS, AuthInfo
from etcdstore.config import ConfigError, parse_duration

_DEFAULT_TTL = 300.0
_KNOWN_OPTIONS = {"sign-method", "pub-key", "priv-key", "ttl"}
_RSA = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_EC = {"ES256", "ES384", "ES512"}
_HMAC = {"HS256", "HS384", "HS512"}
_CACHE_MAX = 10_000

# Not in etcd's gRPC error table, so etcd answers it with code Unknown and the bare message.
VERIFY_ONLY = errors.EtcdError(grpc.StatusCode.UNKNOWN, "auth: token signing attempted with verify-only key")


class JWTTokens:
    kind = "jwt"

    def __init__(self, method: str, sign_key: Any, verify_key: Any, ttl: float) -> None:
        self.method = method
        self._sign_key = sign_key  # None: verify-only
        self._verify_key = verify_key
        self.ttl = ttl
        self._cache: dict[str, tuple[AuthInfo, float]] = {}

    @classmethod
    def from_options(cls, opts: dict[str, str]) -> JWTTokens:
        ttl = _DEFAULT_TTL
        try:
            if opts.get("ttl"):
                ttl = parse_duration(opts["ttl"])
            pub = _read(opts.get("pub-key", ""))
            priv = _read(opts.get("priv-key", ""))
        except (ValueError, OSError):
            raise ConfigError(INVALID_AUTH_OPTS) from None
        method = opts.get("sign-method", "")
        if method not in _RSA | _EC | _HMAC:
            raise ConfigError(INVALID_AUTH_OPTS)  # etcd: invalid auth signature method
        if method in _HMAC:
            if not priv:
                raise ConfigError("auth: missing key data")
            return cls(method, priv, priv, ttl)
        sign_key, verify_key = _asymmetric_keys(method, pub, priv)
        return cls(method, sign_key, verify_key, ttl)

    # -- TokenProvider ---------------------------------------------------------------------

    def gen_prefix(self) -> str:
        return ""

    def enable(self) -> None:
        pass

    def disable(self) -> None:
        pass

    def invalidate_user(self, user: str) -> None:
        pass  # a JWT stays valid until it expires; the revision in it goes stale instead

    def sign(self, user: str, revision: int) -> str:
        if self._sign_key is None:
            raise VERIFY_ONLY()
        claims = {"exp": int(time.time() + self.ttl), "revision": revision, "username": user}
        return jwt.encode(claims, self._sign_key, algorithm=self.method)

    def info(self, token: str, revision: int) -> AuthInfo | None:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if now < hit[1]:
                return hit[0]
            del self._cache[token]
            return None
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.method],
                options={"verify_aud": False, "verify_iss": False},
            )
        except jwt.PyJWTError:
            return None
        user, rev, exp = claims.get("username"), claims.get("revision"), claims.get("exp")
        if not isinstance(user, str) or not isinstance(rev, (int, float)) or isinstance(rev, bool):
            return None
        ai = AuthInfo(user, int(rev))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (ai, float(exp) if isinstance(exp, (int, float)) else now + self.ttl)
        return ai


def _read(path: str) -> bytes:
    if not path:
        return b""
    with open(path, "rb") as f:
        return f.read()


def _asymmetric_keys(method: str, pub_pem: bytes, priv_pem: bytes) -> tuple[Any, Any]:
    """(signing key or None, verifying key) with etcd's checks: some key, and a matching pair."""
    want = rsa if method in _RSA else ec
    priv = pub = None
    try:
        if priv_pem:
            priv = serialization.load_pem_private_key(priv_pem, password=None)
        if pub_pem:
            pub = _load_public(pub_pem)
    except (ValueError, TypeError):
        raise ConfigError(INVALID_AUTH_OPTS) from None
    key_type = want.RSAPrivateKey if want is rsa else want.EllipticCurvePrivateKey
    pub_type = want.RSAPublicKey if want is rsa else want.EllipticCurvePublicKey
    if (priv is not None and not isinstance(priv, key_type)) or (
        pub is not None and not isinstance(pub, pub_type)
    ):
        raise ConfigError(INVALID_AUTH_OPTS)
    if priv is None:
        if pub is None:
            raise ConfigError("auth: missing key data")
        return None, pub
    if pub is not None and _mismatch(priv.public_key(), pub):
        raise ConfigError("auth: public and private keys don't match")
    # Like etcd, tokens are verified with the private key's own public half.
    return priv, priv.public_key()


def _load_public(pem: bytes) -> Any:
    if b"CERTIFICATE" in pem:
        return load_pem_x509_certificate(pem).public_key()
    return serialization.load_pem_public_key(pem)


def _mismatch(mine: Any, given: Any) -> bool:
    """etcd's test, which calls a pair mismatched only when EVERY component differs."""
    if isinstance(mine, rsa.RSAPublicKey):
        a, b = mine.public_numbers(), given.public_numbers()
        return a.e != b.e and a.n != b.n
    a, b = mine.public_numbers(), given.public_numbers()
    return a.curve.name != b.curve.name and a.x != b.x and a.y != b.y
