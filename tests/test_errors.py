"""The error contract's shaping of domain errors, without a server."""

from __future__ import annotations

from graphql import GraphQLError

from ragstream.domain.errors import InvalidInput, RateLimited
from ragstream.schema.errors import shape_error


def _raised(error: Exception) -> GraphQLError:
    return GraphQLError(str(error), path=["field"], original_error=error)


def test_extensions_of_a_domain_error_cannot_replace_its_code() -> None:
    # given a domain error whose extensions carry their own "code"
    error = RateLimited("slow down", extensions={"code": "OK", "reason": "SERVER_BUSY"})

    # when it is shaped for the response
    shaped = shape_error(_raised(error), request_id="r1")

    # then the code is the error's, and its other extensions are kept
    assert shaped.extensions == {"code": "RATE_LIMITED", "reason": "SERVER_BUSY"}
    assert shaped.message == "slow down"


def test_field_of_a_domain_error_is_reported_beside_its_code() -> None:
    shaped = shape_error(_raised(InvalidInput("too long", field="title")), request_id=None)

    assert shaped.extensions == {"code": "BAD_USER_INPUT", "field": "title"}
