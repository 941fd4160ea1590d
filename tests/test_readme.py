"""The README's walkthrough, run block by block against a live server in the order it is written.

GraphQL blocks are sent as GraphiQL would send them (the token from the shell's ``$TOKEN``, the
ids the text tells the reader to keep as variables); shell blocks run in bash, one after the
other, with the variables each one exports; Python blocks are saved under the name their first
line gives, for the shell blocks that run them. Only the server's address is changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gql import GraphQLRequest
from graphql import (
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    parse,
    validate,
)

from tests.support import LiveServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- walkthrough -->", "<!-- /walkthrough -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```[ \t]*$", re.S | re.M)
README_HTTP, README_WS = "http://127.0.0.1:8000/graphql", "ws://127.0.0.1:8000/graphql"
# GraphQL documents inside the JavaScript block: template literals that start with an operation.
JS_OPERATION = re.compile(r"`\s*((?:query|mutation|subscription)\b[^`]*)`")

# What the walkthrough tells the reader to keep, and the variable it is used as later on.
KEPT_IDS = {
    "createEvaluation": "evaluationId",
    "uploadDocument": "documentId",
    "createConversation": "conversationId",
    "sendMessage": "messageId",
}


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int

    def __str__(self) -> str:
        return f"README.md line {self.line} ({self.language})"


def readme_blocks(*, walkthrough_only: bool) -> list[Block]:
    text = README.read_text(encoding="utf-8")
    begin, end = 0, len(text)
    if walkthrough_only:
        begin, end = text.index(START), text.index(END)
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
        if begin <= m.start() < end
    ]


def committed_schema() -> GraphQLSchema:
    return build_schema((ROOT / "schema.graphql").read_text(encoding="utf-8"))


def only_operation(code: str) -> OperationDefinitionNode:
    operations = [d for d in parse(code).definitions if isinstance(d, OperationDefinitionNode)]
    assert len(operations) == 1, "one operation per block, so it can be pasted and run alone"
    return operations[0]


def _events(results: list[dict[str, Any]], field_name: str) -> list[dict[str, Any]]:
    return [r[field_name] for r in results]


@dataclass
class Walkthrough:
    """The reader's state: shell variables, the ids kept so far, and what each step answered."""

    server: LiveServer
    folder: Path
    env: dict[str, str]
    variables: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def localise(self, code: str) -> str:
        return code.replace(README_HTTP, self.server.graphql_url).replace(
            README_WS, self.server.ws_url
        )

    async def run(self, block: Block) -> None:
        if block.language == "graphql":
            await self.graphql(block)
        elif block.language == "bash":
            await self.shell(block)
        elif block.language == "python":
            name = re.match(r"# (\S+\.py)\b", block.code)
            assert name, f"{block}: a Python block starts with `# name.py`"
            (self.folder / name.group(1)).write_text(self.localise(block.code), encoding="utf-8")
        elif block.language == "javascript":
            await check_javascript(block, self.folder)
        else:
            raise AssertionError(f"{block}: no way to run a {block.language} block")

    async def graphql(self, block: Block) -> None:
        operation = only_operation(block.code)
        assert operation.name is not None, f"{block}: name the operation"
        names = [v.variable.name.value for v in operation.variable_definitions or ()]
        missing = [name for name in names if name not in self.variables]
        assert not missing, f"{block}: nothing earlier gives {missing}"
        variables = {name: self.variables[name] for name in names}
        token = self.env.get("TOKEN")
        results: list[dict[str, Any]] = []
        if operation.operation == OperationType.SUBSCRIPTION:
            async with self.server.websocket(token) as session, asyncio.timeout(120):
                request = GraphQLRequest(block.code, variable_values=variables)
                async for result in session.subscribe(request):
                    results.append(result)
        else:
            results.append((await self.server.execute(block.code, variables, token=token)).ok())
        for result in results:
            self.keep_ids(result)
        self.answers[operation.name.value] = results

    def keep_ids(self, data: dict[str, Any]) -> None:
        for name, value in data.items():
            if not isinstance(value, dict):
                continue
            if name in KEPT_IDS and "id" in value:
                self.variables[KEPT_IDS[name]] = value["id"]
            if name == "chat" and value.get("__typename") == "GenerationStarted":
                self.variables["messageId"] = value["assistantMessage"]["id"]

    async def shell(self, block: Block) -> None:
        state = self.folder / ".walkthrough-env"
        script = self.folder / ".walkthrough.sh"
        script.write_text(f"{self.localise(block.code)}\nenv -0 > {state}\n", encoding="utf-8")
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-e",
            "-o",
            "pipefail",
            str(script),
            cwd=self.folder,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(300):
            stdout, stderr = await process.communicate()
        output = stdout.decode()
        assert process.returncode == 0, f"{block} failed:\n{output}\n{stderr.decode()}"
        self.env = dict(
            entry.split("=", 1) for entry in state.read_text().split("\0") if "=" in entry
        )
        self.outputs.append(output)
        try:
            answer = json.loads(output)
        except ValueError:
            return
        if isinstance(answer, dict) and {"data", "errors"} & answer.keys():  # a GraphQL answer
            assert "errors" not in answer, f"{block}: {answer}"
            self.keep_ids(answer["data"])


async def check_javascript(block: Block, folder: Path) -> None:
    """Not run (it needs graphql-ws from npm): its GraphQL is validated, its syntax checked."""
    schema = committed_schema()
    operations = JS_OPERATION.findall(block.code)
    assert operations, f"{block}: no GraphQL operation found"
    for source in operations:
        assert not validate(schema, parse(source)), f"{block}: {source}"
    node = shutil.which("node")
    if node is None:
        return
    path = folder / "check.mjs"
    path.write_text(block.code, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        node, "--check", str(path), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 0, f"{block}: {stderr.decode()}"


def check_answers(walk: Walkthrough) -> None:
    """What each step of the walkthrough says the reader will see."""
    answers = walk.answers
    checks: dict[str, Callable[[list[dict[str, Any]]], None]] = {}

    def step(name: str) -> Callable[[Callable[[list[dict[str, Any]]], None]], None]:
        def register(check: Callable[[list[dict[str, Any]]], None]) -> None:
            checks[name] = check

        return register

    @step("Register")
    def _(results: list[dict[str, Any]]) -> None:
        assert results[0]["register"]["user"]["role"] == "USER"

    @step("CreateEvaluation")
    def _(results: list[dict[str, Any]]) -> None:
        evaluation = results[0]["createEvaluation"]
        assert (evaluation["status"], evaluation["overallScore"]) == ("IN_PROGRESS", 3.5)

    @step("InProgress")
    def _(results: list[dict[str, Any]]) -> None:
        assert results[0]["evaluations"]["totalCount"] == 1

    @step("DocumentEvents")
    def _(results: list[dict[str, Any]]) -> None:
        statuses = [e["status"] for e in _events(results, "documentEvents")]
        assert statuses[-1] == "READY", statuses

    @step("Search")
    def _(results: list[dict[str, Any]]) -> None:
        hits = results[0]["search"]
        assert "Porto" in hits[0]["chunk"]["content"], hits

    @step("CreateConversation")
    def _(results: list[dict[str, Any]]) -> None:
        linked = results[0]["createConversation"]["evaluation"]
        assert linked == {"title": "ERP selection for ACME Manufacturing"}

    @step("Chat")
    def _(results: list[dict[str, Any]]) -> None:
        events = _events(results, "chat")
        kinds = [e["__typename"] for e in events]
        assert kinds[0] == "GenerationStarted", kinds
        assert kinds[-1] == "GenerationCompleted", events[-1]
        message = events[-1]["message"]
        assert message["status"] == "COMPLETE"
        # The offline answerer answers from the linked evaluation.
        assert message["content"].startswith("From the evaluation: Lowest score: Total cost")
        assert "".join(e["delta"] for e in events if "delta" in e) == message["content"]

    @step("Resume")
    def _(results: list[dict[str, Any]]) -> None:
        events = _events(results, "messageStream")
        content = _events(answers["Chat"], "chat")[-1]["message"]["content"]
        deltas = [e for e in events if e["__typename"] == "TokenDelta"]
        assert deltas[0]["offset"] == 20
        assert "".join(e["delta"] for e in deltas) == content[20:]
        assert events[-1] == {
            "__typename": "GenerationCompleted",
            "message": {"status": "COMPLETE"},
        }

    @step("Send")
    def _(results: list[dict[str, Any]]) -> None:
        assert results[0]["sendMessage"]["status"] == "STREAMING"

    @step("Cancel")
    def _(results: list[dict[str, Any]]) -> None:
        # Whether the offline answer finished before the cancel arrived is a race the
        # walkthrough describes either way.
        cancelled = results[0]["cancelGeneration"]
        assert cancelled["id"] == walk.variables["messageId"]
        assert cancelled["status"] in ("CANCELLED", "COMPLETE")

    assert sorted(answers) == sorted(checks), "a walkthrough step without a check, or gone"
    for name, check in checks.items():
        check(answers[name])


async def test_the_walkthrough_runs_as_written(live_server: LiveServer, tmp_path: Path) -> None:
    # Given the README's blocks and a folder for the reader's files
    blocks = readme_blocks(walkthrough_only=True)
    folder = tmp_path / "reader"
    folder.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAGSTREAM_", "OPENAI_")) and key != "TOKEN"
    }
    # `python` and `pip` are this interpreter's, as in the reader's activated virtualenv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    walk = Walkthrough(live_server, folder, env)

    # When each block runs in order
    for block in blocks:
        await walk.run(block)

    # Then every step answered what the text says
    check_answers(walk)
    login, _curl_upload = walk.outputs[0], walk.outputs[1]
    assert login.strip() == f'{{"Authorization": "Bearer {walk.env["TOKEN"]}"}}'
    assert "'status': 'PENDING'" in walk.outputs[-2], walk.outputs[-2]  # python upload.py
    assert "COMPLETE; sources: [1] handbook" in walk.outputs[-1], walk.outputs[-1]  # stream.py


@pytest.mark.parametrize(
    "block",
    [b for b in readme_blocks(walkthrough_only=False) if b.language == "graphql"],
    ids=str,
)
def test_every_graphql_example_is_valid_against_the_schema(block: Block) -> None:
    errors = validate(committed_schema(), parse(block.code))
    assert not errors, f"{block}: {[e.message for e in errors]}"
