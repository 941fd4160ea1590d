"""GraphQL over HTTP: the `application/graphql-response+json` media type and its status codes.

A client that accepts `application/graphql-response+json` (ranked at least as high as
`application/json`) gets it, and with it the spec's status codes: a request error (the
document does not parse or validate, or the variables do not fit it: nothing executed)
answers 400 without a ``data`` entry. Clients asking for `application/json`, or for anything,
keep the legacy behaviour: 200 for every GraphQL result.
"""

from __future__ import annotations

from typing import Any

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
LEGACY_JSON = "application/json"


def _ranks(accept: str) -> dict[str, float]:
    ranks: dict[str, float] = {}
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        ranks[media] = max(ranks.get(media, 0.0), quality)
    return ranks


def wants_graphql_response(accept: str | None) -> bool:
    """Whether the answer should be `application/graphql-response+json`."""
    if not accept:
        return False
    ranks = _ranks(accept)
    preferred = ranks.get(GRAPHQL_RESPONSE_JSON, 0.0)
    return preferred > 0 and preferred >= ranks.get(LEGACY_JSON, 0.0)


def is_request_error(response: dict[str, Any]) -> bool:
    """Nothing executed: no data, and errors that belong to the request, not to a field.

    Field errors carry a ``path``; request errors never do. A masked internal error is the
    server's fault, not the request's, and keeps its 200.
    """
    errors = response.get("errors")
    if response.get("data") is not None or not errors:
        return False
    return all(
        "path" not in error
        and (error.get("extensions") or {}).get("code") != "INTERNAL_SERVER_ERROR"
        for error in errors
    )
