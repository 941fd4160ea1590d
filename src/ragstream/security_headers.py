"""Browser security headers: `nosniff` on every response; on HTML, a strict CSP and no framing."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragstream.graphiql import DIALOG_STYLE_HASH

# A host[:port] as a browser sends it (name, IPv4 or bracketed IPv6); anything else is left out
# of the policy rather than copied into a header.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """Only this server's own files and endpoints. `data:` covers the fonts and icons embedded
    in GraphiQL's stylesheet; the one inline style allowed is named by its hash; sockets are
    named explicitly because browsers differ on whether 'self' covers ws: and wss:."""
    connect = "'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            f"style-src 'self' {DIALOG_STYLE_HASH}",
            "img-src 'self' data:",
            "font-src 'self' data:",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                added = [(b"x-content-type-options", b"nosniff")]
                content_type = dict(headers).get(b"content-type", b"").lower()
                if content_type.startswith(b"text/html"):
                    host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
                    added += [
                        (b"content-security-policy", content_security_policy(host).encode()),
                        (b"x-frame-options", b"DENY"),
                    ]
                headers += [(name, value) for name, value in added if name not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
