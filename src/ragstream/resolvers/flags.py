"""Feature flag resolvers: read the context, call the flags domain, map to schema types."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

import strawberry

from ragstream.db.repositories.flags import FlagFilter
from ragstream.domain.flags import service
from ragstream.domain.flags.enums import UsageGroupBy
from ragstream.domain.flags.features import FeatureDefaults
from ragstream.domain.flags.usage import usage_report as report
from ragstream.resolvers.ids import parse_id
from ragstream.schema.context import Info
from ragstream.schema.flags.types import (
    FeatureFlag,
    FeatureFlagChange,
    FeatureFlagFilter,
    SetFeatureFlagInput,
    UsageReportRow,
    to_feature_flag,
    to_feature_flag_change,
    to_usage_row,
)
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection

DEFAULT_REPORT_ROWS = 400


def _environment(info: Info) -> str:
    return info.context.state.settings.environment


def _defaults(info: Info) -> FeatureDefaults:
    return info.context.state.feature_defaults


def _optional_id(value: strawberry.ID | None, kind: str) -> uuid.UUID | None:
    return None if value is None else parse_id(value, kind)


async def feature_flag(
    info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the flag.")]
) -> FeatureFlag:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        row = await service.get_flag(
            session, viewer, parse_id(id, "feature flag"), environment=_environment(info)
        )
    return to_feature_flag(row)


async def feature_flags(
    info: Info,
    filter: Annotated[
        FeatureFlagFilter | None, strawberry.argument(description="Optional narrowing.")
    ] = None,
    first: FirstArg = None,
    after: AfterArg = None,
) -> Connection[FeatureFlag]:
    viewer = await info.context.viewer()
    where = FlagFilter()
    if filter is not None:
        where = FlagFilter(
            key=filter.key,
            scope=filter.scope,
            user_id=_optional_id(filter.user_id, "user"),
            evaluation_id=_optional_id(filter.evaluation_id, "evaluation"),
            role=filter.role,
        )
    async with info.context.transaction() as session:
        page = await service.list_flags(
            session,
            viewer,
            environment=_environment(info),
            first=first,
            after=after,
            where=where,
        )
    return to_connection(page, to_feature_flag)


async def feature_flag_changes(
    info: Info,
    flag_id: Annotated[
        strawberry.ID | None,
        strawberry.argument(description="Only the changes of this flag (deleted ones too)."),
    ] = None,
    key: Annotated[
        str | None, strawberry.argument(description="Only the changes of flags of this feature.")
    ] = None,
    first: FirstArg = None,
    after: AfterArg = None,
) -> Connection[FeatureFlagChange]:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        page = await service.list_changes(
            session,
            viewer,
            environment=_environment(info),
            first=first,
            after=after,
            flag_id=_optional_id(flag_id, "feature flag"),
            key=key,
        )
    return to_connection(page, to_feature_flag_change)


async def set_feature_flag(
    info: Info,
    input: Annotated[SetFeatureFlagInput, strawberry.argument(description="The flag to set.")],
) -> FeatureFlag:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        row = await service.set_flag(
            session,
            viewer,
            environment=_environment(info),
            defaults=_defaults(info),
            key=input.key,
            scope=input.scope,
            user_id=_optional_id(input.user_id, "user"),
            evaluation_id=_optional_id(input.evaluation_id, "evaluation"),
            role=input.role,
            enabled=input.enabled,
            metadata=input.metadata,
        )
    return to_feature_flag(row)


async def delete_feature_flag(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the flag to delete.")],
) -> strawberry.ID:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        await service.delete_flag(
            session, viewer, parse_id(id, "feature flag"), environment=_environment(info)
        )
    return id


async def usage_report(
    info: Info,
    from_: Annotated[
        date, strawberry.argument(name="from", description="First UTC day, included.")
    ],
    to: Annotated[date, strawberry.argument(description="Last UTC day, included.")],
    group_by: Annotated[UsageGroupBy, strawberry.argument(description="One row per what.")],
    limit: Annotated[
        int | None,
        strawberry.argument(
            description=f"At most this many rows, 1 to 1000 (default {DEFAULT_REPORT_ROWS})."
        ),
    ] = DEFAULT_REPORT_ROWS,
) -> list[UsageReportRow]:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        rows = await report(
            session,
            viewer,
            start=from_,
            end=to,
            group=group_by,
            limit=DEFAULT_REPORT_ROWS if limit is None else limit,
        )
    return [to_usage_row(row, group_by) for row in rows]
