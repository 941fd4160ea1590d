"""The schema as a contract: everything described, and the committed SDL matching the code."""

from __future__ import annotations

from pathlib import Path

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    is_specified_directive,
)

from ragstream.schema import build_schema, export_sdl
from ragstream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def graphql_schema() -> GraphQLSchema:
    settings = Settings(introspection=True, jwt_secret="s" * 40)  # type: ignore[arg-type]
    return build_schema(settings)._schema


def undescribed(schema: GraphQLSchema) -> list[str]:
    """Every type, field, argument and enum value of ours without a description."""
    missing: list[str] = []

    def check(path: str, description: str | None) -> None:
        if not (description or "").strip():
            missing.append(path)

    for name, type_ in schema.type_map.items():
        if name.startswith("__"):
            continue  # introspection types belong to GraphQL itself
        check(name, type_.description)
        if isinstance(type_, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in type_.fields.items():
                check(f"{name}.{field_name}", field.description)
                for arg_name, arg in field.args.items():
                    check(f"{name}.{field_name}({arg_name})", arg.description)
        elif isinstance(type_, GraphQLInputObjectType):
            for field_name, input_field in type_.fields.items():
                check(f"{name}.{field_name}", input_field.description)
        elif isinstance(type_, GraphQLEnumType):
            for value_name, value in type_.values.items():
                check(f"{name}.{value_name}", value.description)
        elif isinstance(type_, GraphQLUnionType):
            pass  # the union's own description is checked above
    for directive in schema.directives:
        if not is_specified_directive(directive):
            check(f"@{directive.name}", directive.description)
            for arg_name, arg in directive.args.items():
                check(f"@{directive.name}({arg_name})", arg.description)
    return missing


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    assert undescribed(graphql_schema()) == []


def test_the_check_would_notice_a_missing_description() -> None:
    schema = graphql_schema()
    user = schema.type_map["User"]
    assert isinstance(user, GraphQLObjectType)
    field = user.fields["email"]
    original = field.description
    field.description = None
    try:
        assert undescribed(schema) == ["User.email"]
    finally:
        field.description = original


def test_committed_sdl_matches_the_code() -> None:
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == export_sdl(), (
        "schema.graphql is out of date: run `ragstream export-schema -o schema.graphql`"
    )


def test_the_sdl_does_not_depend_on_runtime_switches() -> None:
    production = Settings(environment="production", jwt_secret="s" * 40)  # type: ignore[arg-type]
    assert build_schema(production).as_str() + "\n" == export_sdl()
