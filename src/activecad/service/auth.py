"""Users, API tokens and roles.

A token is 32 random bytes (``secrets.token_urlsafe``) shown once when it is made; the store
keeps only its SHA-256, so a copy of the database gives no working token. Requests carry it
in the header ``Authorization: Bearer <token>`` (never in a URL, never logged). Roles are
ordered annotator < reviewer < admin: a route that needs a reviewer accepts an admin.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from activecad.errors import InputError
from activecad.store import Store
from activecad.store.models import ROLES, ApiToken, User

__all__ = [
    "Principal",
    "add_user",
    "current_user",
    "hash_token",
    "list_users",
    "require",
    "revoke_user",
]

TOKEN_PREFIX = "acd_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class Principal:
    """The user a request was authenticated as."""

    id: int
    name: str
    role: str

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}", fix=f"use one of {', '.join(ROLES)}")
    return role


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InputError(
            f"{name!r} is not a valid user name",
            fix="use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
        )
    return name


def add_user(store: Store, name: str, role: str) -> str:
    """Create a user (or give an existing one a new role) and a new token; return the token.

    The token is returned once and never stored in clear. An existing user keeps its older
    tokens (revoke them with :func:`revoke_user`).

    Raises:
        InputError: a bad name or role.
    """
    _check_name(name)
    _check_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with store.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                user = User(name=name, role=role)
                session.add(user)
                session.flush()
            user.role = role
            session.add(ApiToken(user_id=user.id, token_sha256=hash_token(token)))
    except IntegrityError as exc:  # the same name added at the same moment elsewhere
        raise InputError(
            f"user {name!r} was added at the same moment elsewhere", fix="retry"
        ) from exc
    return token


def revoke_user(store: Store, name: str) -> int:
    """Revoke every live token of a user; return how many were revoked.

    Raises:
        InputError: no such user.
    """
    with store.session() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise InputError(f"no such user {name!r}", fix="see 'activecad users list'")
        tokens = session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        ).all()
        now = datetime.now(UTC)
        for token in tokens:
            token.revoked_at = now
        return len(tokens)


def list_users(store: Store) -> list[dict[str, Any]]:
    """Every user: name, role, created (ISO-8601), live tokens."""
    with store.session() as session:
        users = session.scalars(select(User).order_by(User.name)).all()
        counts: dict[int, int] = {}
        for uid in session.scalars(select(ApiToken.user_id).where(ApiToken.revoked_at.is_(None))):
            counts[uid] = counts.get(uid, 0) + 1
        return [
            {
                "name": u.name,
                "role": u.role,
                "created": (
                    u.created_at if u.created_at.tzinfo else u.created_at.replace(tzinfo=UTC)
                ).isoformat(timespec="seconds"),
                "tokens": counts.get(u.id, 0),
            }
            for u in users
        ]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def current_user(request: Request) -> Principal:
    """The authenticated user of a request (FastAPI dependency); 401 without a live token."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing token: send the header 'Authorization: Bearer <token>'")
    store: Store = request.app.state.service.store
    with store.session() as session:
        row = session.execute(
            select(User.id, User.name, User.role, ApiToken.revoked_at)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_sha256 == hash_token(token))
        ).first()
    if row is None:
        raise _unauthorized("unknown token")
    if row.revoked_at is not None:
        raise _unauthorized("this token was revoked; ask an admin for a new one")
    principal = Principal(row.id, row.name, row.role)
    request.state.user = principal.name
    return principal


def require(role: str) -> Any:
    """A dependency that lets through users with ``role`` or a higher one (403 otherwise)."""
    _check_role(role)

    def dependency(user: Principal = Depends(current_user)) -> Principal:
        if not user.has(role):
            raise HTTPException(403, f"this needs the role {role} (you are {user.role})")
        return user

    return dependency
