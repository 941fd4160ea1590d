"""The application state: the long-lived collaborators every request, job and command shares.

Its own module, below the schema and the view: they take it as a parameter, and only the app
factory (app.py) builds it. The commands without HTTP use its base, `backend.Backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import strawberry

from ragstream.backend import Backend
from ragstream.domain.chat.generation import GenerationManager
from ragstream.domain.flags.features import FeatureDefaults
from ragstream.domain.users.auth import AuthService
from ragstream.domain.users.tokens import TokenService
from ragstream.persisted import PersistedDocuments
from ragstream.settings import ConfigurationError
from ragstream.socket_limits import SocketRegistry

if TYPE_CHECKING:
    from ragstream.schema.prepared import PreparedReads


@dataclass(kw_only=True)
class AppState(Backend):
    """The backend plus what answering requests needs. Connected in the lifespan."""

    schema: strawberry.Schema
    tokens: TokenService
    auth: AuthService
    chat: GenerationManager
    sockets: SocketRegistry  # open websockets per client address and per user
    # Built-in feature defaults (the settings below any flag), see domain/flags/features.py.
    feature_defaults: FeatureDefaults
    # Trusted documents: persisted query hashes and the registered manifest.
    persisted: PersistedDocuments = field(
        default_factory=lambda: PersistedDocuments("automatic", {})
    )
    # Repeated reads answered from their plan without the pipeline (schema/prepared.py);
    # None when compiled reads are off.
    prepared: PreparedReads | None = None
    # A configuration error that stopped the lifespan from starting (serve reports it, exit 2).
    startup_error: ConfigurationError | None = None
