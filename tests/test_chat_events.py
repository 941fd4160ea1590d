"""How the end of a failed answer is shown to clients: an enum code and a readable reason."""

from __future__ import annotations

import uuid

from ragstream.domain.chat.enums import FailureCode
from ragstream.schema.chat.types import generation_failed


def test_a_failure_carries_its_code_as_the_enum_and_a_reason() -> None:
    answer = uuid.uuid4()

    event = generation_failed(answer, "PROVIDER_TIMEOUT")

    assert event.message_id == str(answer)
    assert event.code is FailureCode.PROVIDER_TIMEOUT
    assert event.reason == "The language model took too long to answer. Please try again."
    assert event.message() == event.reason  # the deprecated alias


def test_an_unknown_stored_code_reads_as_an_internal_error() -> None:
    event = generation_failed(uuid.uuid4(), "SOMETHING_OLDER")

    assert event.code is FailureCode.INTERNAL_SERVER_ERROR
    assert event.reason == "The answer failed because of an internal error."
