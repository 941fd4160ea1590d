"""Root fields for feature flags and usage analytics (admin only)."""

from __future__ import annotations

import strawberry

from ragstream.resolvers import flags
from ragstream.schema.flags.types import FeatureFlag, FeatureFlagChange, UsageReportRow
from ragstream.schema.pagination import Connection
from ragstream.schema.permissions import admin_only


@strawberry.type
class FlagQueries:
    feature_flag: FeatureFlag = strawberry.field(
        resolver=flags.feature_flag,
        description="One feature flag of this environment (admin only).",
        permission_classes=admin_only,
    )
    feature_flags: Connection[FeatureFlag] = strawberry.field(
        resolver=flags.feature_flags,
        description="This environment's feature flags by feature, oldest first (admin only).",
        permission_classes=admin_only,
    )
    feature_flag_changes: Connection[FeatureFlagChange] = strawberry.field(
        resolver=flags.feature_flag_changes,
        description="The audit trail of feature flag changes, newest first (admin only).",
        permission_classes=admin_only,
    )
    usage_report: list[UsageReportRow] = strawberry.field(
        resolver=flags.usage_report,
        description="Chat usage (questions, answers, tokens) over a range of UTC days, grouped "
        "by day, account or model (admin only).",
        permission_classes=admin_only,
    )


@strawberry.type
class FlagMutations:
    set_feature_flag: FeatureFlag = strawberry.field(
        resolver=flags.set_feature_flag,
        description="Create or replace the flag of a feature at one scope; applies from the "
        "next request (admin only).",
        permission_classes=admin_only,
    )
    delete_feature_flag: strawberry.ID = strawberry.field(
        resolver=flags.delete_feature_flag,
        description="Delete a feature flag; returns its id (admin only).",
        permission_classes=admin_only,
    )
