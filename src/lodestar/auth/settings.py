"""How bearer tokens are verified: one set of variables read by every process.

The gateway and every gRPC service verify the same tokens, so they read the same
settings: each field under ``LODESTAR_<NAME>`` (a platform-wide variable, like the
keepalive interval), and under the gateway's older ``LODESTAR_GATEWAY_<NAME>`` too,
so that an existing deployment's variables keep working and now reach the services.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lodestar.auth.permissions import DEFAULT_ROLES, Permission

# Signs and verifies development tokens when no JWKS URL is configured. It is
# public knowledge, so a process using it must never face the internet.
DEVELOPMENT_SIGNING_KEY = "lodestar-development-signing-key-do-not-use-in-production"

_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"})


def _variables(name: str) -> AliasChoices:
    return AliasChoices(f"LODESTAR_{name}", f"LODESTAR_GATEWAY_{name}")


class TokenSettings(BaseSettings):
    """The token verifier's settings (``tokens.TokenVerifier``)."""

    # Fields are named as in code (``TokenSettings(jwt_issuer=...)``) as well as by
    # their variables.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    jwt_signing_key: SecretStr = Field(
        SecretStr(DEVELOPMENT_SIGNING_KEY),
        validation_alias=_variables("JWT_SIGNING_KEY"),
        description="HS256 key that signs and verifies tokens when no JWKS URL is set, the "
        "same on the gateway and every service. The default is a public development key: "
        "set a secret one wherever the platform is reachable by anyone but you.",
    )
    jwt_jwks_url: str = Field(
        "",
        validation_alias=_variables("JWT_JWKS_URL"),
        description="JWKS URL of the identity provider; set it to accept the tokens your "
        "identity provider issues. When set, tokens must be signed by one of its keys with "
        "an algorithm of jwt_algorithms, and HS256 tokens are refused.",
    )
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = Field(
        ("RS256", "ES256"),
        validation_alias=_variables("JWT_ALGORITHMS"),
        description="Algorithms accepted with a JWKS URL (comma-separated; asymmetric "
        "only); add the one your identity provider signs with if it is not RS256 or ES256.",
    )
    jwt_issuer: str = Field(
        "lodestar",
        validation_alias=_variables("JWT_ISSUER"),
        description="Required `iss` claim; set it to your identity provider's issuer.",
    )
    jwt_audience: str = Field(
        "lodestar-api",
        validation_alias=_variables("JWT_AUDIENCE"),
        description="Required `aud` claim; set it to the audience your identity provider "
        "puts in the tokens it issues for Lodestar.",
    )
    jwt_leeway_s: float = Field(
        30.0,
        ge=0,
        le=600,
        validation_alias=_variables("JWT_LEEWAY_S"),
        description="Clock skew tolerated on exp and nbf, in seconds; raise it only where "
        "the clocks of the token issuer and the platform drift further apart.",
    )
    jwt_required_claims: Annotated[tuple[str, ...], NoDecode] = Field(
        ("exp", "nbf", "iss", "aud", "sub"),
        validation_alias=_variables("JWT_REQUIRED_CLAIMS"),
        description="Claims every token must carry (comma-separated); drop one only if "
        "your identity provider does not issue it.",
    )
    jwks_cache_s: float = Field(
        300.0,
        gt=0,
        validation_alias=_variables("JWKS_CACHE_S"),
        description="How long keys fetched from the JWKS URL are trusted, in seconds; lower "
        "it if your identity provider retires keys sooner after rotating them.",
    )
    roles: dict[str, tuple[Permission, ...]] = Field(
        default_factory=lambda: {role: tuple(perms) for role, perms in DEFAULT_ROLES.items()},
        validation_alias=_variables("ROLES"),
        description="Role → permissions, JSON; set it to give your identity provider's "
        "roles their permissions. Defaults: viewer, user, editor, operator, admin (see "
        "lodestar.auth.permissions).",
    )

    @field_validator("jwt_algorithms", "jwt_required_claims", mode="before")
    @classmethod
    def _token_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _token_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [alg for alg in value if alg not in _ASYMMETRIC]
        if bad or not value:
            raise ValueError(
                f"JWKS algorithms must be asymmetric ({sorted(_ASYMMETRIC)}), got {bad}"
            )
        return value
