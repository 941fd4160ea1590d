"""Chat usage per account and UTC day: the ledger behind the daily quota and `User.usage`.

Kept apart from `messages` on purpose: deleting a conversation deletes its messages, and neither
the quota nor the token totals may shrink with them. Only deleting the account removes its rows.
"""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import BigInteger, Date, ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from ragstream.db.base import Base


class UsageDaily(Base):
    __tablename__ = "usage_daily"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    questions: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # Answers started (as the questions are); their tokens are added once each answer ends.
    answers: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
