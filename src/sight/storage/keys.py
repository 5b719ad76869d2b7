"""Teams and API keys. A key reads ``sk-sight-<id>-<secret>``; only SHA-256(secret) is stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sight.errors import AuthenticationError, ConflictError, NotFoundError
from sight.storage.db import read_only, session_factory
from sight.storage.tables import ApiKey, Team

KEY_PREFIX = "sk-sight-"
KEY_PATTERN = re.compile(r"^sk-sight-(key_[a-z0-9]{12})-([A-Za-z0-9_\-]{20,100})$")
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's public id and its team."""

    key_id: str
    team_id: str
    team_name: str
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    team: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None


# Every request asks this: columns on a plain connection, not ORM objects in a session, and the statement built
# once (about half the time).
_VERIFY = (select(ApiKey.secret_hash, ApiKey.team_id, ApiKey.is_admin, ApiKey.revoked_at, ApiKey.expires_at,
                  Team.name).join(Team, Team.id == ApiKey.team_id).where(ApiKey.id == bindparam("key_id")))


class KeyStore:
    def __init__(self, db: AsyncEngine) -> None:
        self._sessions = session_factory(db)
        self._reads = session_factory(db, readonly=True)
        self._read_db = read_only(db)

    async def has_teams(self) -> bool:
        async with self._reads() as s:
            return (await s.execute(select(Team.id).limit(1))).first() is not None

    async def ensure_team(self, name: str) -> str:
        async with self._sessions() as s, s.begin():
            team = (await s.execute(select(Team).where(Team.name == name))).scalar_one_or_none()
            if team is None:
                team = Team(id="team_" + secrets.token_hex(6), name=name, created_at=_now())
                s.add(team)
            return team.id

    async def create_key(
        self, team: str, *, name: str | None = None, is_admin: bool = False, expires_at: datetime | None = None
    ) -> tuple[str, KeyInfo]:
        """Create a key in ``team`` (made if missing). Returns the full key, shown only this once."""
        team_id = await self.ensure_team(team)
        key_id = "key_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        row = ApiKey(
            id=key_id, team_id=team_id, name=name, secret_hash=_hash(secret), is_admin=is_admin,
            created_at=_now(), expires_at=expires_at,
        )
        async with self._sessions() as s, s.begin():
            s.add(row)
        info = KeyInfo(key_id, team, name, row.created_at, None, expires_at)
        return f"{KEY_PREFIX}{key_id}-{secret}", info

    async def list_keys(self) -> list[KeyInfo]:
        async with self._reads() as s:
            rows = await s.execute(
                select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id).order_by(ApiKey.created_at)
            )
            return [
                KeyInfo(k.id, team, k.name, k.created_at, k.revoked_at, k.expires_at) for k, team in rows.all()
            ]

    async def revoke(self, key_id: str) -> None:
        async with self._sessions() as s, s.begin():
            key = await s.get(ApiKey, key_id)
            if key is None:
                raise NotFoundError(f"no key {key_id!r}")
            if key.revoked_at is not None:
                raise ConflictError(f"key {key_id!r} is already revoked")
            key.revoked_at = _now()

    async def verify(self, presented: str) -> Principal:
        """The principal for a presented key; every failure reads the same to the caller."""
        if not presented.isascii():  # keys are ASCII; anything else (a lone surrogate, say) is simply invalid
            raise AuthenticationError("invalid API key")
        match = KEY_PATTERN.match(presented)
        key_id, secret = match.groups() if match else ("", presented)
        row = None
        if match:
            async with self._read_db.connect() as conn:
                row = (await conn.execute(_VERIFY, {"key_id": key_id})).first()
        # Compare even when there is no such key, so unknown and wrong keys cost the same.
        ok = hmac.compare_digest(row.secret_hash if row else _DUMMY_HASH, _hash(secret))
        if row is None or not ok:
            raise AuthenticationError("invalid API key")
        if row.revoked_at is not None:
            raise AuthenticationError("invalid API key")
        expires = row.expires_at
        if expires is not None and (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) <= _now():
            raise AuthenticationError("invalid API key")
        return Principal(key_id=key_id, team_id=row.team_id, team_name=row.name, is_admin=row.is_admin)
