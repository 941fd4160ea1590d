"""Access JWTs (HS256, pinned) and opaque refresh tokens stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from ragstream.domain.errors import Unauthenticated

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
MAX_TOKEN_LENGTH = 4096
# Access tokens already verified, by their exact text (see `TokenService.decode_access`).
VERIFIED_TOKENS = 4096


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    # The refresh-token family of the sign-in; the token is valid only while it is not revoked.
    session_id: uuid.UUID
    expires_at: datetime


@dataclass(frozen=True)
class IssuedRefreshToken:
    raw: str
    digest: str
    expires_at: datetime


def refresh_digest(raw: str) -> str:
    # surrogatepass: a garbage token with a lone surrogate still digests (to nothing stored).
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


class TokenService:
    def __init__(self, secret: bytes, *, access_ttl: int, refresh_ttl: int) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._verified: dict[str, AccessClaims] = {}

    def issue_access(self, user_id: uuid.UUID, session_id: uuid.UUID) -> str:
        now = datetime.now(UTC)
        claims = {
            "sub": str(user_id),
            "sid": str(session_id),
            "typ": ACCESS_TYPE,
            "iat": now,
            "exp": now + timedelta(seconds=self.access_ttl),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def decode_access(self, token: str) -> AccessClaims:
        """Validate an access token; every failure is the same UNAUTHENTICATED answer.

        A client sends the same token with every request until it expires: a token whose
        signature and claims were verified once is remembered by its exact text (the last
        `VERIFIED_TOKENS` of them) and then only its expiry is checked again.
        """
        verified = self._verified.get(token)
        if verified is not None:
            if verified.expires_at.timestamp() > time.time():
                return verified
            del self._verified[token]
        claims = self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> AccessClaims:
        invalid = Unauthenticated("invalid or expired access token")
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise invalid
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "sub", "sid"]},
            )
            if claims.get("typ") != ACCESS_TYPE:
                raise invalid
            return AccessClaims(
                user_id=uuid.UUID(str(claims["sub"])),
                session_id=uuid.UUID(str(claims["sid"])),
                expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
            )
        # OverflowError / OSError: a validly signed claim far outside the clock's range.
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError, OSError) as exc:
            raise invalid from exc

    def issue_refresh(self) -> IssuedRefreshToken:
        raw = secrets.token_urlsafe(48)
        return IssuedRefreshToken(
            raw=raw,
            digest=refresh_digest(raw),
            expires_at=datetime.now(UTC) + timedelta(seconds=self.refresh_ttl),
        )
