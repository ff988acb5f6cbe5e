"""Token providers: simple tokens (sliding TTL, invalidation) and JWT (keys, options, format)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from etcdstore import errors
from etcdstore.auth import tokens as tokens_module
from etcdstore.auth.jwt_token import VERIFY_ONLY, JWTTokens
from etcdstore.auth.tokens import SimpleTokens, decompose_options, new_provider
from etcdstore.config import ConfigError


def write_keys(tmp: Path, kind: str, name: str = "k") -> tuple[str, str]:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp / f"{name}.pem", tmp / f"{name}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return str(pub), str(priv)


def _segment(token: str, i: int) -> bytes:
    part = token.split(".")[i]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class _Clock:
    """Stands in for the tokens module's `time`: the test moves it instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_simple_token_sliding_ttl_and_invalidation(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(tokens_module, "time", clock)
    t = SimpleTokens(0.3)
    assert t.assign("u", "p" * 16, 7) == "pppppppppppppppp.7"
    assert t.info("pppppppppppppppp.7", 5) is None  # not enabled: never remembered
    t.enable()
    tok = t.assign("u", t.gen_prefix(), 8)
    assert len(tok.split(".")[0]) == 16 and tok.split(".")[0].isalpha()
    for _ in range(3):  # each use pushes the expiry out
        clock.now += 0.2
        info = t.info(tok, 42)
        assert info is not None and (info.user, info.revision) == ("u", 42)
    clock.now += 0.4
    assert t.info(tok, 42) is None  # idle longer than the TTL
    a, b = t.assign("alice", "a" * 16, 1), t.assign("bob", "b" * 16, 2)
    t.invalidate_user("alice")
    assert t.info(a, 1) is None and t.info(b, 1) is not None
    t.disable()
    assert t.info(b, 1) is None and len(t) == 0


def test_option_parsing_like_etcd(tmp_path: Path) -> None:
    assert decompose_options("jwt,pub-key=a,sign-method=RS256") == (
        "jwt",
        {"pub-key": "a", "sign-method": "RS256"},
    )
    for bad in ("jwt,pub-key", "jwt,a=1,a=2", "jwt,a=b=c", "bogus"):
        with pytest.raises(ConfigError):
            new_provider(bad, 300)
    assert isinstance(new_provider("simple", 10), SimpleTokens)
    pub, priv = write_keys(tmp_path, "rsa")
    with pytest.raises(ConfigError, match="invalid auth options"):
        new_provider(f"jwt,pub-key={pub},priv-key={priv}", 300)  # sign-method is required
    with pytest.raises(ConfigError, match="missing key data"):
        new_provider("jwt,sign-method=RS256", 300)
    with pytest.raises(ConfigError):
        new_provider(f"jwt,priv-key={priv},sign-method=ES256", 300)  # an RSA key for ECDSA
    with pytest.raises(ConfigError):
        new_provider(f"jwt,priv-key={priv},sign-method=RS256,ttl=5 minutes", 300)
    other_pub, _ = write_keys(tmp_path, "ec", "other")
    with pytest.raises(ConfigError):
        new_provider(f"jwt,pub-key={other_pub},priv-key={priv},sign-method=RS256", 300)


@pytest.mark.parametrize("kind,method", [("rsa", "RS256"), ("rsa", "PS384"), ("ec", "ES256")])
def test_jwt_sign_verify_across_members(tmp_path: Path, kind: str, method: str) -> None:
    pub, priv = write_keys(tmp_path, kind)
    issuer = new_provider(f"jwt,pub-key={pub},priv-key={priv},sign-method={method},ttl=1h30m", 300)
    verifier = new_provider(f"jwt,pub-key={pub},sign-method={method}", 300)  # verify-only member
    assert isinstance(issuer, JWTTokens) and issuer.ttl == 5400
    token = issuer.sign("alice", 9)
    # Go's encoding: header and claims with keys in sorted order, compact JSON.
    assert _segment(token, 0) == json.dumps({"alg": method, "typ": "JWT"}, separators=(",", ":")).encode()
    claims = _segment(token, 1)
    assert claims.startswith(b'{"exp":') and claims.endswith(b',"revision":9,"username":"alice"}')
    assert abs(json.loads(claims)["exp"] - (time.time() + 5400)) < 5
    for member in (issuer, verifier):
        info = member.info(token, 100)
        assert info is not None and (info.user, info.revision) == ("alice", 9)  # the token's own revision
    with pytest.raises(errors.EtcdError) as e:
        verifier.sign("alice", 1)
    assert e.value == VERIFY_ONLY
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert verifier.info(forged, 1) is None and verifier.info("abc.def", 1) is None


def test_jwt_expiry_and_wrong_algorithm(tmp_path: Path) -> None:
    pub, priv = write_keys(tmp_path, "rsa")
    short = new_provider(f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=1s", 300)
    token = short.sign("u", 1)  # type: ignore[attr-defined]  # sign is not on the protocol
    assert short.info(token, 1) is not None
    time.sleep(2.1)
    assert short.info(token, 1) is None  # expired (also when it was cached)
    hs_key = tmp_path / "hmac"
    hs_key.write_bytes(b"0123456789abcdef0123456789abcdef")
    hs = new_provider(f"jwt,priv-key={hs_key},sign-method=HS256", 300)
    # sign is not on the protocol
    assert hs.info(hs.sign("u", 1), 1) is not None  # type: ignore[attr-defined]
    rs = new_provider(f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256", 300)
    assert rs.info(hs.sign("u", 1), 1) is None  # type: ignore[attr-defined]  # sign is not on the protocol
