"""Bearer JWT verification and development tokens: the one verifier of the platform.

The gateway verifies a REST caller's token with it, and every gRPC service the
token that comes in a call's metadata (``auth.rpc``); both read ``TokenSettings``
from the same variables, so a token means the same on every hop.

A token's claims: ``sub`` (the subject rate limits and usage are counted
for), ``roles`` (a list, or one string), optional ``permissions`` (granted in
addition to the roles' ones, for service accounts), optional ``collections``
(an allow-list of collection names; shell-style wildcards such as ``docs-*``
work) and optional ``tenant`` (every point read or written is confined to that
tenant by the vector service).

Development tokens are HS256 with the configured signing key; in production
the platform takes RS256/ES256 tokens whose keys come from a JWKS URL, and then
refuses HS256 outright, so that a public key can never be used as an HMAC
secret (algorithm confusion). ``alg: none`` is never accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt

from lodestar.auth.permissions import Permission, Principal, permissions_for
from lodestar.auth.settings import TokenSettings
from lodestar.runtime.errors import Unauthenticated, Unavailable


def _invalid(message: str, reason: str = "INVALID_TOKEN") -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def _string_list(claims: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _invalid(f"token claim {name!r} must be a string or a list of strings")


class TokenVerifier:
    """Verifies bearer tokens and turns their claims into a ``Principal``.

    Verified tokens are remembered until they expire, so that the signature is
    checked once per token rather than once per request.
    """

    _CACHE_LIMIT = 10_000
    _REFRESH_INTERVAL_S = 10.0

    def __init__(self, settings: TokenSettings) -> None:
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_s
        self._required = list(settings.jwt_required_claims)
        self._roles: Mapping[str, Iterable[Permission]] = settings.roles
        self._jwks: jwt.PyJWKClient | None = None
        self._jwks_cache_s = settings.jwks_cache_s
        self._keys: dict[str, tuple[Any, float]] = {}
        self._last_refresh = float("-inf")
        if settings.jwt_jwks_url:
            self._jwks = jwt.PyJWKClient(
                settings.jwt_jwks_url,
                cache_jwk_set=True,
                lifespan=int(settings.jwks_cache_s),
                timeout=5,
            )
            self._algorithms = list(settings.jwt_algorithms)
            self._secret = ""
        else:
            self._algorithms = ["HS256"]
            self._secret = settings.jwt_signing_key.get_secret_value()
        self._cache: dict[str, Principal] = {}

    async def verify(self, token: str) -> Principal:
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.not_before - self._leeway <= now < cached.expires_at + self._leeway:
                return cached
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise _invalid(f"malformed bearer token: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise _invalid(
                f"token algorithm {algorithm!r} is not accepted; use one of {self._algorithms}",
                reason="TOKEN_ALGORITHM_REFUSED",
            )
        key: Any = self._secret if self._jwks is None else await self._jwks_key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.ImmatureSignatureError:
            raise _invalid(
                "the token is not valid yet (nbf)", reason="TOKEN_NOT_YET_VALID"
            ) from None
        except jwt.InvalidAudienceError:
            raise _invalid(f"the token's audience is not {self._audience!r}") from None
        except jwt.InvalidIssuerError:
            raise _invalid(f"the token's issuer is not {self._issuer!r}") from None
        except jwt.MissingRequiredClaimError as error:
            raise _invalid(f"the token lacks the required {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _invalid("the token's signature does not verify") from None
        except jwt.PyJWTError as error:
            raise _invalid(f"invalid bearer token: {error}") from None
        principal = self._principal(claims)
        if len(self._cache) >= self._CACHE_LIMIT:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    async def _jwks_key(self, kid: object) -> Any:
        if kid is not None and not isinstance(kid, str):
            raise _invalid("token header 'kid' must be a string")
        cache_key = kid or ""
        cached = self._keys.get(cache_key)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self._jwks_cache_s:
            return cached[0]
        try:
            key = self._find_key(await self._key_set(refresh=False), kid)
            if key is None and now - self._last_refresh >= self._REFRESH_INTERVAL_S:
                # An unknown kid may be a freshly rotated key; refetching for
                # every unknown kid would let anyone hammer the provider.
                self._last_refresh = now
                key = self._find_key(await self._key_set(refresh=True), kid)
        except jwt.PyJWKClientConnectionError:
            # The identity provider is unreachable: not the caller's fault.
            raise Unavailable(
                "the identity provider's signing keys cannot be fetched; retry shortly",
                reason="JWKS_UNAVAILABLE",
                retry_after_s=5.0,
            ) from None
        except jwt.PyJWKClientError as error:
            raise _invalid(f"no signing key for this token: {error}") from None
        if key is None:
            raise _invalid(f"no signing key {kid!r} in the identity provider's key set")
        self._keys[cache_key] = (key, now)
        return key

    async def _key_set(self, *, refresh: bool) -> list[jwt.PyJWK]:
        assert self._jwks is not None
        # PyJWKClient fetches with urllib, which blocks: keep it off the event loop.
        return await asyncio.to_thread(self._jwks.get_signing_keys, refresh)

    @staticmethod
    def _find_key(keys: list[jwt.PyJWK], kid: str | None) -> Any:
        if not kid:
            if len(keys) != 1:
                raise _invalid("token header has no 'kid' and the key set has several keys")
            return keys[0].key
        return next((k.key for k in keys if k.key_id == kid), None)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _invalid("token claim 'sub' must be a non-empty string")
        roles = _string_list(claims, "roles") or ()
        extra = _string_list(claims, "permissions") or ()
        collections = _string_list(claims, "collections")
        tenant = claims.get("tenant", "")
        if not isinstance(tenant, str):
            raise _invalid("token claim 'tenant' must be a string")
        exp = claims.get("exp")
        nbf = claims.get("nbf")
        return Principal(
            subject=subject,
            roles=roles,
            permissions=permissions_for(roles, extra, self._roles),
            tenant=tenant,
            collections=collections,
            expires_at=float(exp) if isinstance(exp, int | float) else float("inf"),
            not_before=float(nbf) if isinstance(nbf, int | float) else 0.0,
        )


def mint_token(
    settings: TokenSettings,
    subject: str,
    roles: Sequence[str],
    ttl_s: float,
    *,
    tenant: str = "",
    collections: Sequence[str] | None = None,
    permissions: Sequence[str] = (),
    now: float | None = None,
) -> str:
    """An HS256 token signed with the configured (development) key."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": list(roles),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + max(1, int(ttl_s)),
    }
    if permissions:
        claims["permissions"] = list(permissions)
    if collections is not None:
        claims["collections"] = list(collections)
    if tenant:
        claims["tenant"] = tenant
    return jwt.encode(claims, settings.jwt_signing_key.get_secret_value(), algorithm="HS256")
