"""Bearer JWT verification: the accepted tokens and the attacks refused."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from lodestar.auth.permissions import Permission
from lodestar.auth.tokens import TokenVerifier, mint_token
from lodestar.runtime.errors import Unauthenticated, Unavailable
from lodestar.services.gateway.auth import parse_duration
from lodestar.services.gateway.settings import GatewaySettings
from tests.gateway.harness import RunningGateway, free_port

ISSUER = "lodestar"
AUDIENCE = "lodestar-api"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "roles": ["user"],
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def settings() -> GatewaySettings:
    return GatewaySettings(jwt_leeway_s=0)


@pytest.fixture
def hs_verifier(settings: GatewaySettings) -> TokenVerifier:
    return TokenVerifier(settings)


def _dev_key(settings: GatewaySettings) -> str:
    return settings.jwt_signing_key.get_secret_value()


async def test_minted_token_verifies(settings: GatewaySettings, hs_verifier: TokenVerifier) -> None:
    token = mint_token(
        settings,
        "bob",
        ["user"],
        60,
        tenant="acme",
        collections=["docs-*"],
        permissions=["ViewMetrics"],
    )
    principal = await hs_verifier.verify(token)
    assert principal.subject == "bob"
    assert principal.tenant == "acme"
    assert principal.has(Permission.GENERATE_TEXT)
    assert principal.has(Permission.VIEW_METRICS)
    assert not principal.has(Permission.DELETE_VECTORS)
    assert principal.may_use_collection("docs-7")
    assert not principal.may_use_collection("private")


async def _refused(verifier: TokenVerifier, token: str, reason: str | None = None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    if reason is not None:
        assert caught.value.reason == reason, caught.value.message
    return caught.value.message


async def test_alg_none_is_refused(hs_verifier: TokenVerifier) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims(roles=["admin"])).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        await _refused(hs_verifier, token)


async def test_tampered_signature_and_claims(
    settings: GatewaySettings, hs_verifier: TokenVerifier
) -> None:
    token = jwt.encode(_claims(), _dev_key(settings), algorithm="HS256")
    header, body, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    message = await _refused(hs_verifier, f"{header}.{body}.{flipped}")
    assert "signature" in message
    escalated = _b64(json.dumps(_claims(roles=["admin"])).encode())
    await _refused(hs_verifier, f"{header}.{escalated}.{signature}")
    other_key = jwt.encode(_claims(), "not-the-key-" * 4, algorithm="HS256")
    await _refused(hs_verifier, other_key)


async def test_expired_and_not_yet_valid(
    settings: GatewaySettings, hs_verifier: TokenVerifier
) -> None:
    key = _dev_key(settings)
    now = int(time.time())
    expired = jwt.encode(_claims(exp=now - 5, nbf=now - 100), key, algorithm="HS256")
    await _refused(hs_verifier, expired, "TOKEN_EXPIRED")
    early = jwt.encode(_claims(nbf=now + 300), key, algorithm="HS256")
    await _refused(hs_verifier, early, "TOKEN_NOT_YET_VALID")


async def test_leeway_tolerates_small_skew() -> None:
    settings = GatewaySettings(jwt_leeway_s=30)
    now = int(time.time())
    token = jwt.encode(
        _claims(nbf=now + 10), settings.jwt_signing_key.get_secret_value(), algorithm="HS256"
    )
    assert (await TokenVerifier(settings).verify(token)).subject == "alice"


async def test_wrong_issuer_audience_and_missing_claims(
    settings: GatewaySettings, hs_verifier: TokenVerifier
) -> None:
    key = _dev_key(settings)
    assert "issuer" in await _refused(hs_verifier, jwt.encode(_claims(iss="evil"), key, "HS256"))
    assert "audience" in await _refused(hs_verifier, jwt.encode(_claims(aud="other"), key, "HS256"))
    for claim in ("exp", "nbf", "iss", "aud", "sub"):
        message = await _refused(hs_verifier, jwt.encode(_claims(**{claim: None}), key, "HS256"))
        assert claim in message
    await _refused(hs_verifier, jwt.encode(_claims(roles=[1, 2]), key, "HS256"))
    await _refused(hs_verifier, jwt.encode(_claims(tenant=5), key, "HS256"))
    await _refused(hs_verifier, "not-a-jwt")


# --- asymmetric keys from a JWKS URL -------------------------------------------------------


class _JwksHandler(BaseHTTPRequestHandler):
    document = b"{}"
    hits: ClassVar[list[int]] = [0]

    def do_GET(self) -> None:
        type(self).hits[0] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).document)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture(scope="module")
def jwks_url(keys: dict[str, Any]) -> Iterator[str]:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(keys["rsa"].public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk = json.loads(ECAlgorithm.to_jwk(keys["ec"].public_key()))
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    handler = type(
        "Handler", (_JwksHandler,), {"document": json.dumps({"keys": [rsa_jwk, ec_jwk]}).encode()}
    )
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


async def test_rs256_and_es256_from_jwks(keys: dict[str, Any], jwks_url: str) -> None:
    verifier = TokenVerifier(GatewaySettings(jwt_jwks_url=jwks_url))
    rs = jwt.encode(_claims(sub="rs"), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(_claims(sub="es"), keys["ec"], algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(rs)).subject == "rs"
    assert (await verifier.verify(es)).subject == "es"
    # A key the identity provider does not publish.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(_claims(), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    await _refused(verifier, forged)
    # Unknown key ids refetch the key set at most once per interval.
    before = _JwksHandler.hits[0]
    for n in range(5):
        unknown = jwt.encode(_claims(), keys["rsa"], algorithm="RS256", headers={"kid": f"no{n}"})
        await _refused(verifier, unknown)
    assert _JwksHandler.hits[0] - before <= 1


async def test_unreachable_key_set_is_503_not_401(keys: dict[str, Any]) -> None:
    verifier = TokenVerifier(GatewaySettings(jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks"))
    token = jwt.encode(_claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    with pytest.raises(Unavailable):
        await verifier.verify(token)


async def test_algorithm_confusion_is_refused(keys: dict[str, Any], jwks_url: str) -> None:
    verifier = TokenVerifier(GatewaySettings(jwt_jwks_url=jwks_url))
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    # The classic attack: HS256 "signed" with the RSA public key as the secret.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = _b64(json.dumps(_claims(roles=["admin"])).encode())
    import hashlib
    import hmac

    signature = _b64(hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    await _refused(verifier, f"{header}.{body}.{signature}", "TOKEN_ALGORITHM_REFUSED")
    # And the other way: an RS256 token where only HS256 (development key) is accepted.
    hs_only = TokenVerifier(GatewaySettings())
    rs = jwt.encode(_claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    await _refused(hs_only, rs, "TOKEN_ALGORITHM_REFUSED")
    # A development token is worthless once a JWKS URL is configured.
    dev = mint_token(GatewaySettings(), "mallory", ["admin"], 60)
    await _refused(verifier, dev, "TOKEN_ALGORITHM_REFUSED")


def test_jwks_settings_refuse_symmetric_algorithms() -> None:
    with pytest.raises(ValueError, match="asymmetric"):
        GatewaySettings(jwt_jwks_url="http://idp/jwks", jwt_algorithms="RS256,HS256")


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1h") == 3600
    assert parse_duration("2d") == 172800
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


async def test_http_401_shapes(gateway: RunningGateway, client: httpx.AsyncClient) -> None:
    url = "/api/v1/collections"
    cases = {
        "Basic abc": "MALFORMED_AUTHORIZATION",
        "Bearer": "MALFORMED_AUTHORIZATION",
        "Bearer garbage": "INVALID_TOKEN",
        "Bearer "
        + mint_token(gateway.settings, "a", ["admin"], 60, now=time.time() - 1000): "TOKEN_EXPIRED",
    }
    for header, reason in cases.items():
        response = await client.get(url, headers={"Authorization": header})
        assert response.status_code == 401, header
        error = response.json()["error"]
        assert error["details"]["reason"] == reason
        assert error["request_id"] == response.headers["x-request-id"]
