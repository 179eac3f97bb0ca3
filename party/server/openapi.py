"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Built from the endpoints declared in ``operations`` and the shapes declared in ``shapes`` (those
``wire`` encodes and parses), so the document cannot drift from what the server sends. The
committed copy docs/openapi.json is written by ``python -m party.server.openapi
docs/openapi.json``. Imports ``operations``, ``shapes``, ``wire`` and ``party``'s version; never
tornado, a store or the queue.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import cache
from typing import Any

from .. import __version__
from . import shapes, wire
from .operations import (
    FORBIDDEN,
    OPERATIONS,
    PATH_PARAMS,
    TOO_LARGE,
    UNAUTHORIZED,
    UNAVAILABLE,
    Answer,
    Operation,
)
from .shapes import Field, Shape


def schema_of(shape: Shape) -> dict[str, Any]:
    """The JSON Schema of an object of ``shape``."""
    schema: dict[str, Any] = {
        "type": "object",
        "description": shape.doc,
        "properties": {name: _described(f) for name, f in shape.fields.items()},
    }
    required = [name for name, f in shape.fields.items() if f.required]
    if required:
        schema["required"] = required
    if shape.closed:
        schema["additionalProperties"] = False
    return schema


def _described(f: Field) -> dict[str, Any]:
    return {**f.schema, "description": f.doc}


def _parameter(where: str, name: str, f: Field) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path" or f.required,
        "description": f.doc,
        "schema": dict(f.schema),
    }


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(answer: Answer) -> dict[str, Any]:
    schema = shapes.ref(answer.shape)
    out: dict[str, Any] = {
        "description": answer.description,
        "content": _content({"type": "array", "items": schema} if answer.array else schema),
    }
    if answer.media:
        out["content"] = {
            media: {"schema": {"type": "string", "description": text}}
            for media, text in answer.media.items()
        }
    if answer.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in answer.headers.items()
        }
    if answer.links:
        out["links"] = {name: dict(link) for name, link in answer.links.items()}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    answers: dict[int, Answer | str] = dict(op.answers)
    if op.token:
        answers[401] = UNAUTHORIZED
    answers.update({403: FORBIDDEN, 413: TOO_LARGE, 503: UNAVAILABLE})
    out: dict[str, Any] = {"operationId": op.id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    params = [
        _parameter("path", name, PATH_PARAMS[name])
        for name in PATH_PARAMS
        if "{" + name + "}" in op.path
    ]
    params += [_parameter("query", name, f) for name, f in op.query.items()]
    params += [_parameter("header", name, f) for name, f in op.headers.items()]
    if params:
        out["parameters"] = params
    if op.body is not None:
        schema = shapes.ref(op.body)
        out["requestBody"] = {
            "required": op.body_required,
            "content": _content(schema if op.body_required else shapes.nullable(schema)),
        }
    out["responses"] = {
        str(status): _answer(Answer(a) if isinstance(a, str) else a)
        for status, a in sorted(answers.items())
    }
    if not op.token:
        out["security"] = []
    return out


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy: tools such as schemathesis modify what they load)."""
    return copy.deepcopy(_document())


@cache
def _document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    schemas = {name: schema_of(shape) for name, shape in shapes.SHAPES.items()}
    schemas["OpenAPI"] = {
        "type": "object",
        "description": "An OpenAPI 3.1 document.",
        "required": ["openapi", "info", "paths"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Party",
            "version": __version__,
            "description": "A job-queue daemon: applications add tasks over HTTP, a scheduler "
            "runs them in forked workers. Every body is JSON; every error answers "
            '{"error": "<what is wrong and how to fix it>"} (plus "index" for the item of a '
            "batch) with a 4xx status, or 503 when the store or a worker is unavailable (nothing "
            "was written); any other 5xx is a bug. Times are ISO 8601 UTC. Every object may "
            "carry more keys than listed. See docs/http-api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8032", "description": "the default address"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed only when the server has a token (PARTY_TOKEN / "
                    "--token); then every request but GET /health carries it.",
                }
            },
        },
    }


@cache
def document_bytes() -> bytes:
    """The document as the body of ``GET /openapi.json``."""
    return wire.dumps(_document())


def document_text() -> str:
    """The document as docs/openapi.json holds it (indented, one final newline)."""
    return json.dumps(_document(), indent=2, ensure_ascii=False) + "\n"


def endpoints() -> str:
    """Every endpoint, as ``GET /tasks, POST /tasks, ...`` (for a 404's message)."""
    return ", ".join(f"{op.method.upper()} {op.path}" for op in OPERATIONS)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as out:
            out.write(document_text())
    else:
        sys.stdout.write(document_text())
