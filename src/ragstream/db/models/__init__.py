"""ORM models, one module per area. Importing this package registers every table on the metadata.

They are storage, not API types: the schema layer maps them explicitly.
"""

from ragstream.db.models.chat import (  # noqa: F401
    Conversation,
    Message,
    MessageSource,
    ServerProcess,
    UsageDaily,
)
from ragstream.db.models.documents import Chunk, Document, DocumentContent  # noqa: F401
from ragstream.db.models.evaluations import Evaluation  # noqa: F401
from ragstream.db.models.flags import FeatureFlag, FeatureFlagChange  # noqa: F401
from ragstream.db.models.users import RefreshToken, SignInAttempt, User

__all__ = ["RefreshToken", "SignInAttempt", "User"]
