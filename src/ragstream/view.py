"""The GraphQL endpoint: HTTP, GraphiQL and `graphql-transport-ws` websockets on one path."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.execution import SubscriptionExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from ragstream.domain.errors import Unauthenticated
from ragstream.edge import (
    MalformedJSON,
    decode_json,
    domain_error_response,
    http_error_response,
)
from ragstream.graphiql import GraphiQLAssets
from ragstream.graphql_http import GRAPHQL_RESPONSE_JSON, is_request_error, wants_graphql_response
from ragstream.persisted import wants_resolving
from ragstream.prepared_lane import PREPARED_TRIED
from ragstream.schema.context import Context
from ragstream.schema.prepared import request_key
from ragstream.upload_names import UploadNameRefused, scan_upload_names
from ragstream.websocket import TooManySockets, TransportWSHandler

if TYPE_CHECKING:
    from ragstream.state import AppState

logger = logging.getLogger(__name__)

# Where a request whose document may be prepared keeps its (document, name) and variables.
PREPARE_KEY = "ragstream.prepare"

# Headers a browser cannot send cross-site without a CORS preflight.
PREFLIGHT_HEADERS = (b"apollo-require-preflight", b"x-requested-with", b"graphql-preflight")
PREFLIGHT_MISSING = (
    "multipart requests (uploads) need an Apollo-Require-Preflight or X-Requested-With header: "
    "send `Apollo-Require-Preflight: true`"
)


def bearer_token(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


class SubResponse(Response):
    """Headers and status a request's resolvers may set, and the media type it negotiated."""

    graphql_response_json = False
    # GET only: whether the answer can depend on who asks (credentials were sent).
    get_request = False
    credentials = False


class GraphQLView(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWSHandler

    def __init__(self, state: AppState, assets: GraphiQLAssets | None = None) -> None:
        settings = state.settings
        super().__init__(
            state.schema,
            # The page itself is ragstream's (render_graphql_ide), built from bundled assets.
            graphql_ide="graphiql" if assets is not None else None,
            allow_queries_via_get=True,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=timedelta(
                seconds=settings.ws_connection_init_timeout_seconds
            ),
            multipart_uploads_enabled=True,
            max_subscriptions_per_connection=settings.ws_max_operations,
            # Browsers on these origins may open sockets (with the user's cookies); others get 403.
            allowed_origins=settings.cors_origins,
        )
        self.state = state
        self.graphiql_page = assets.page() if assets is not None else ""
        # Repeated reads answered from their plan without the pipeline (schema/prepared.py).
        self.prepared = state.prepared

    def may_prepare(self, scope: Scope) -> bool:
        """A plain JSON POST, outside trusted-document modes and tracing (which the pipeline
        alone handles), with prepared reads on."""
        if self.prepared is None or scope["method"] != "POST":
            return False
        content_type = accept = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
        return (
            content_type.lower().startswith(b"application/json")
            and b"multipart" not in accept
            and b"event-stream" not in accept
            and not wants_resolving(self.state.persisted, None)
            and not self.state.tracing.enabled
        )

    async def prepared_response(self, request: Request, body: bytes) -> Response | None:
        """The response of a prepared read with this ``body`` (a request `may_prepare`
        accepted), or None for the pipeline to answer (see schema/prepared.py; a document it
        has not seen yet is marked to be learned)."""
        prepared = self.prepared
        assert prepared is not None  # see may_prepare
        try:
            found = request_key(self.decode_json(body))
        except MalformedJSON:
            return None
        if found is None:
            return None
        key, variables = found
        entry = prepared.get(key)
        if entry is None:
            request.scope[PREPARE_KEY] = found
            return None
        context = await self.get_context(request)
        try:
            data = await prepared.answer(entry, context, variables)
        except Exception:  # GiveWay, or a failure the pipeline reports (and retries)
            return None
        finally:
            await context.close()
        # What create_response makes of data without errors, a POST's response setting no
        # header: the same body and content type.
        negotiated = wants_graphql_response(request.headers.get("accept"))
        media_type = f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8" if negotiated else "application/json"
        return Response(orjson.dumps({"data": data}), media_type=media_type)

    def encode_json(self, data: object) -> str:
        # Text, because websocket messages must be text frames.
        return orjson.dumps(data).decode()

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(self.graphiql_page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope.get("headers") or [])
            content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
            # CSRF: a multipart form can be posted cross-site by any page; demand a header that
            # forces a CORS preflight, as Apollo and GraphQL Yoga do.
            if content_type.startswith("multipart/") and not any(
                h in headers for h in PREFLIGHT_HEADERS
            ):
                # A GraphQL error body (BAD_USER_INPUT), so clients (gql, Apollo) show the
                # message, not only "400 Bad Request".
                refusal = HTTPException(400, PREFLIGHT_MISSING)
                await http_error_response(refusal)(scope, receive, send)
                return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, scan_upload_names(scope, receive))
        # A request the prepared lane (prepared_lane.py) tried is not tried again.
        if PREPARED_TRIED not in scope and self.may_prepare(scope):
            prepared_response = await self.prepared_response(request, await request.body())
            if prepared_response is not None:
                await prepared_response(scope, receive, send)
                return
        try:
            response = await self.run(request)
        except HTTPException as exc:  # Strawberry answers these as plain text
            response = http_error_response(exc)
        except UploadNameRefused as refused:
            response = domain_error_response(refused.error)
        await response(scope, receive, send)

    def decode_json(self, data: str | bytes) -> object:
        # Websocket messages come through here (a MalformedJSON closes the socket with 4400).
        return decode_json(data, max_depth=self.state.settings.max_json_depth)

    def parse_json(self, data: str | bytes) -> Any:
        try:
            return self.decode_json(data)
        except MalformedJSON as exc:
            raise HTTPException(400, exc.reason) from None

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = SubResponse()
        sub_response.status_code = None  # type: ignore[assignment]  # unset until a hook sets it
        del sub_response.headers["content-length"]
        sub_response.graphql_response_json = wants_graphql_response(request.headers.get("accept"))
        sub_response.get_request = request.scope.get("method") == "GET"
        sub_response.credentials = "authorization" in request.headers or "cookie" in request.headers
        return sub_response

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        negotiated = isinstance(sub_response, SubResponse) and sub_response.graphql_response_json
        if negotiated and isinstance(response_data, dict) and is_request_error(dict(response_data)):
            response_data = cast("GraphQLHTTPResponse", {"errors": response_data.get("errors")})
            sub_response.status_code = sub_response.status_code or 400
        response = super().create_response(response_data, sub_response)
        if negotiated:
            response.headers["content-type"] = f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8"
        if isinstance(sub_response, SubResponse) and sub_response.get_request:
            response.headers["cache-control"] = self._cache_control(response_data, sub_response)
            response.headers["vary"] = "Accept, Authorization, Cookie"
        return response

    def _cache_control(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: SubResponse,
    ) -> str:
        """Shared caches may keep a GET answer only when no viewer shaped it and all went well."""
        if sub_response.credentials:
            return "private, no-store"
        max_age = self.state.settings.get_cache_max_age_seconds
        if isinstance(response_data, dict) and not response_data.get("errors") and max_age > 0:
            return f"public, max-age={max_age}"
        return "no-store"

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        try:
            result = await super().execute_operation(
                request, request_adapter, request_data, context, root_value, sub_response
            )
        finally:
            # The request's connection goes back to the pool before the response is encoded.
            await context.close()
        candidate = request.scope.get(PREPARE_KEY)
        if (
            candidate is not None
            and self.prepared is not None
            and context.answered_by_plan
            and isinstance(result, ExecutionResult)
            and result.data is not None
            and not result.errors
            and not result.extensions
        ):
            self.prepared.learn(*candidate)
        return result

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        # Uploaded files are spooled to temporary files: close them whatever the outcome
        # (a resolver that never ran, e.g. refused by a permission, cannot).
        await request.close()
        return await super().process_result(request, result)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket | None = None
    ) -> Context:
        context = Context(
            state=self.state,
            request=request,
            request_id=request.scope.get("state", {}).get("request_id", "-"),
        )
        if isinstance(request, Request):
            self._authenticate(context, request.headers.get("authorization"))
        return context

    def _authenticate(self, context: Context, header: str | None) -> None:
        token = bearer_token(header)
        if token is None:
            return
        try:
            context.claims = self.state.tokens.decode_access(token)
        except Unauthenticated:
            context.token_invalid = True

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        raw = params.get("authorization") or params.get("Authorization")
        header = raw if isinstance(raw, str) else context.request.headers.get("authorization")
        self._authenticate(context, header)
        if context.token_invalid:
            raise ConnectionRejectionError()
        if context.claims is not None:
            try:
                user = await context.viewer()
            except Unauthenticated:
                raise ConnectionRejectionError() from None
            sockets = self.state.sockets
            if not sockets.open_user(user.id):
                raise TooManySockets
            context.on_close.append(lambda: sockets.close_user(user.id))
            # TransportWSHandler closes the socket when the token expires.
        return cast("UnsetType", UNSET)
