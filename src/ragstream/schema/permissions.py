"""Coarse gates on root fields. Fine-grained authorization lives in repository queries."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from ragstream.domain.users.service import require_admin
from ragstream.schema.context import Info


class IsAuthenticated(BasePermission):
    message = "authentication required"

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        await info.context.viewer()  # raises Unauthenticated with its code
        return True


class IsAdmin(BasePermission):
    message = "administrator role required"

    async def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        require_admin(await info.context.viewer())  # raises Forbidden with its code
        return True


# The permission lists of root fields, declared once.
signed_in: list[type[BasePermission]] = [IsAuthenticated]
admin_only: list[type[BasePermission]] = [IsAdmin]
