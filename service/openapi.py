"""Completes the OpenAPI document Litestar generates: every status a route can answer (as
problem+json, with an example), the real media types of exports and streams, the routes that
need no key, strict request bodies, and the transcript's own JSON Schema for imports.

The completed document is the one served, both as ``/schema/openapi.json`` and inside the API
explorer at ``/schema`` (Swagger UI, its files served from the swagger-ui-bundle package, so the
page works offline, under a content security policy)."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from typing import Any

import msgspec
from litestar import Request, Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin, SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from service import transcripts

PROBLEM = "application/problem+json"
PUBLIC = ("/health", "/ready", "/metrics", "/v1/transcripts/schema")
STRICT_BODIES = (
    "ConversationCreate",
    "ConversationPatch",
    "MessagesAppend",
    "TurnCreate",
    "ForkCreate",
    "SystemMessage",
    "UserMessage",
    "AssistantMessage",
    "ToolMessage",
    "ToolCall",
    "FunctionCall",
    "ResponseCreate",
    "ConversationRef",
    "OpenAIConversationCreate",
    "OpenAIConversationUpdate",
    "OpenAIItemsCreate",
)
OPENAI = "/openai/v1"
# The creating POSTs of /openai/v1 that take an Idempotency-Key, as /v1's do.
OPENAI_IDEMPOTENT = (
    f"{OPENAI}/responses",
    f"{OPENAI}/conversations",
    f"{OPENAI}/conversations/{{conversation_id}}/items",
)
MESSAGES = ("SystemMessage", "UserMessage", "AssistantMessage", "ToolMessage")
CODES = {
    400: ("bad_request", "`cursor` is not a cursor this API handed out."),
    401: ("unauthorized", "Send an API key as `Authorization: Bearer <key>`."),
    403: ("forbidden", "This route needs an admin key."),
    404: ("not_found", "No conversation has this id."),
    409: (
        "turn_in_progress",
        "A turn is already running in this conversation; wait for it to finish.",
    ),
    413: ("payload_too_large", "Request Entity Too Large"),
    422: ("validation_error", "Object missing required field `content` - at `$.messages[0]`"),
    429: ("upstream_rate_limited", "The model is rate limited: Too many requests."),
    502: (
        "upstream_error",
        "The model rejected the request (400): Model grok-4 does not "
        "support parameter presencePenalty.",
    ),
    504: ("upstream_timeout", "The model did not answer within 3600 s."),
}
PROBLEM_SCHEMA = {
    "type": "object",
    "description": "An RFC 9457 problem; `code` says what went wrong, for programs.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}
OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "description": "An error in OpenAI's shape (the `/openai/v1` surface).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Makes a retried request return the first answer instead of acting twice.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def problem(status: int) -> dict[str, Any]:
    code, detail = CODES[status]
    example = {
        "type": "about:blank",
        "title": _phrase(status),
        "status": status,
        "detail": detail,
        "code": code,
    }
    response: dict[str, Any] = {
        "description": _phrase(status),
        "content": {
            PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}
        },
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}
        }
    return response


def openai_error(status: int) -> dict[str, Any]:
    code, detail = CODES.get(status, ("bad_request", _phrase(status)))
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(status)
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    example = {"error": {"message": detail, "type": kind, "param": None, "code": code}}
    schema = {"$ref": "#/components/schemas/OpenAIError"}
    return {
        "description": _phrase(status),
        "content": {"application/json": {"schema": schema, "example": example}},
    }


def _openai_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    statuses = {400, 401}
    if "{" in path or (method == "post" and path.endswith("/responses")):
        statuses.add(404)  # an id, or a previous response or conversation, that is not there
    if "requestBody" in operation:
        statuses.add(413)
    if method == "post" and path.endswith(("/responses", "/items")):
        statuses.add(409)  # a turn running in the conversation
    if method == "post" and path in OPENAI_IDEMPOTENT:
        statuses.add(409)  # an Idempotency-Key still in use
    if method == "delete" and "/responses/" in path:
        statuses.add(409)
    if method == "delete" and "{conversation_id}" in path:
        statuses.add(409)  # a legal hold; an item while a response runs
    if method == "post" and path.endswith("/responses"):
        statuses |= {429, 502, 504}
    return statuses


def _phrase(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


def _statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    statuses = {400, 401}
    if path.startswith("/admin"):
        statuses.add(403)
    if "{conversation_id}" in path:
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {413, 422}
    if method == "post" and path.endswith(("/turns", "/messages")):
        statuses |= {409}
    if method == "delete" and "{conversation_id}" in path:
        statuses.add(409)  # a legal hold; a message while a turn runs
    if method == "patch" and path == "/v1/conversations/{conversation_id}":
        statuses.add(409)  # a new head_id while a turn runs
    if method == "post" and path.endswith("/turns"):
        statuses |= {429, 502, 504}
    if method == "post" and path.startswith("/v1/conversations") and "{source}" not in path:
        statuses.add(409)  # an Idempotency-Key still in use; an import already made
    return statuses


def _transcript_components() -> tuple[dict[str, Any], dict[str, Any]]:
    """The transcript schema as OpenAPI components (its $defs renamed) and the root schema."""
    raw = copy.deepcopy(transcripts.schema())

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    v.replace("#/$defs/", "#/components/schemas/Transcript_")
                    if k == "$ref" and isinstance(v, str)
                    else rewrite(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    definitions = rewrite(raw.pop("$defs"))
    for key in ("$schema", "$id"):
        raw.pop(key, None)
    components = {f"Transcript_{name}": schema for name, schema in definitions.items()}
    return components, rewrite(raw)


# OpenAPI links: what a creating call's answer gives to the calls that can follow it (by path
# parameter, as a runtime expression). A client generator or a tester reads how to go on.
LINKS: dict[tuple[str, str], dict[str, str]] = {
    ("/v1/conversations", "post"): {"conversation_id": "$response.body#/id"},
    ("/v1/conversations/import", "post"): {"conversation_id": "$response.body#/id"},
    ("/v1/conversations/{conversation_id}/messages", "post"): {
        "message_id": "$response.body#/data/0/id"
    },
    ("/v1/conversations/{conversation_id}/turns", "post"): {
        "turn_id": "$response.body#/turn/id",
        "message_id": "$response.body#/reply/id",
    },
    (f"{OPENAI}/conversations", "post"): {"conversation_id": "$response.body#/id"},
    (f"{OPENAI}/conversations/{{conversation_id}}/items", "post"): {
        "item_id": "$response.body#/data/0/id"
    },
    (f"{OPENAI}/responses", "post"): {"response_id": "$response.body#/id"},
}


def _links(paths: dict[str, Any]) -> None:
    """Add ``LINKS`` to the success answers of their operations: to every operation of the
    same API whose path parameters the answer (or the request's own path) gives, one of them
    at least from the answer."""
    for (source, method), given in LINKS.items():
        operation = paths[source][method]
        root = OPENAI if source.startswith(OPENAI) else "/v1/"
        known = {name: f"$request.path.{name}" for name in re.findall(r"{(\w+)}", source)}
        known.update(given)
        links: dict[str, Any] = {}
        for path, item in paths.items():
            needed = set(re.findall(r"{(\w+)}", path))
            if not path.startswith(root) or not needed & set(given) or not needed <= set(known):
                continue
            for verb, target in item.items():
                if verb in ("get", "post", "patch", "put", "delete"):
                    links[target["operationId"]] = {
                        "operationId": target["operationId"],
                        "parameters": {name: known[name] for name in sorted(needed)},
                    }
        success = next(code for code in operation["responses"] if code.startswith("2"))
        operation["responses"][success]["links"] = links


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """The finished OpenAPI document (a copy; the input is left as it is)."""
    doc = copy.deepcopy(document)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["OpenAIError"] = OPENAI_ERROR_SCHEMA
    transcript_parts, transcript = _transcript_components()
    schemas.update(transcript_parts)
    schemas["Transcript"] = transcript
    for name in STRICT_BODIES:
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    for name in MESSAGES:
        if name in schemas and "content" in schemas[name].get("properties", {}):
            content: dict[str, Any] = {"$ref": "#/components/schemas/Transcript_content"}
            if name == "AssistantMessage":
                content = {"oneOf": [content, {"type": "null"}]}
            schemas[name]["properties"]["content"] = content
    schemas["ChatParams"] = _chat_params()
    for name in ("ConversationCreate", "ConversationPatch", "TurnCreate"):
        params = schemas.get(name, {}).get("properties", {}).get("params")
        if params is not None:
            variants = params.get("oneOf", [params])
            for i, variant in enumerate(variants):
                if variant.get("type") == "object":
                    variants[i] = {"$ref": "#/components/schemas/ChatParams"}
            if "oneOf" not in params:
                schemas[name]["properties"]["params"] = variants[0]

    _links(doc.get("paths", {}))
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "post", "patch", "put", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            _import_bodies(path, method, operation)
            if path in PUBLIC:
                operation["security"] = []
                responses.pop("400", None)
            elif path.startswith(OPENAI):
                for status in sorted(_openai_statuses(path, method, operation)):
                    responses[str(status)] = openai_error(status)
            else:
                for status in sorted(_statuses(path, method, operation)):
                    responses[str(status)] = problem(status)
            if method == "post" and (
                path in OPENAI_IDEMPOTENT
                or (
                    path.startswith("/v1/conversations")
                    and ("{source}" not in path and not path.endswith("/fork"))
                )
            ):
                operation.setdefault("parameters", []).append(IDEMPOTENCY_HEADER)
            _media_types(path, method, operation)
    return doc


def _chat_params() -> dict[str, Any]:
    """The schema of ``params``: the names the service sets are refused, the chat parameters
    xAI documents have their types and ranges (``ChatParams``), any other name is allowed."""
    from service.schemas import RESERVED_PARAMS, ChatParams

    known = msgspec.json.schema(ChatParams)["$defs"]["ChatParams"]
    return {
        "type": "object",
        "description": known["description"],
        "properties": {name: _free_objects(prop) for name, prop in known["properties"].items()},
        "additionalProperties": True,
        "propertyNames": {"not": {"enum": sorted(RESERVED_PARAMS)}},
    }


def _free_objects(node: Any) -> Any:
    """A msgspec JSON Schema without defaults, its ``dict[str, Any]`` objects saying that they
    take any member (generators read an object with no members listed as an empty one)."""
    if isinstance(node, list):
        return [_free_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    done = {k: _free_objects(v) for k, v in node.items() if k != "default"}
    if done.get("type") == "object" and "properties" not in done:
        done.setdefault("additionalProperties", True)
    return done


def _media_types(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation["responses"]
    ok = responses.get("200") or responses.get("201")
    if path.endswith("/export") and "{conversation_id}" in path and ok:
        if path.startswith("/v1"):
            ok["content"]["text/markdown"] = {"schema": {"type": "string"}}
        ok["content"]["application/json"] = {"schema": {"$ref": "#/components/schemas/Transcript"}}
    elif path in ("/v1/export", "/admin/export") and ok:
        ok["content"] = {
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "One transcript per line."}
            }
        }
    elif path.endswith("/events") and ok:
        ok["content"] = {
            "text/event-stream": {"schema": {"description": "Events whose data are JSON objects."}}
        }
    elif path == f"{OPENAI}/responses" and method == "post" and ok:
        ok["content"]["text/event-stream"] = {
            "schema": {
                "description": "With `stream: true`: the Responses events (data are JSON objects)."
            }
        }
    elif path.endswith("/turns") and method == "post" and ok:
        ok["content"]["text/event-stream"] = {
            "schema": {
                "description": "With `stream: true`: the turn's events (data are JSON objects)."
            }
        }
    elif path == "/metrics" and ok:
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif path == "/ready":
        responses["503"] = {
            "description": "The database is not reachable",
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    if path.endswith("/fork") and "requestBody" in operation:
        operation["requestBody"]["required"] = False
    if path.endswith("/import/{source}"):
        for parameter in operation.get("parameters", []):
            if parameter.get("name") == "source":
                parameter["schema"] = {"type": "string", "enum": ["chatgpt", "openwebui"]}


class Completed:
    """The completed document, made once from the one Litestar generates (which it also makes
    once per app) and shared by every page that shows it."""

    def __init__(self) -> None:
        self._generated: dict[str, Any] | None = None
        self._completed: dict[str, Any] = {}

    def __call__(self, generated: dict[str, Any]) -> dict[str, Any]:
        if generated is not self._generated:
            self._completed = complete(generated)
            self._generated = generated
        return self._completed


def _import_bodies(path: str, method: str, operation: dict[str, Any]) -> None:
    """The import routes read their body themselves (off the event loop): say what it is."""
    if method != "post":
        return
    schema: dict[str, Any]
    if path == "/v1/conversations/import":
        schema = {"$ref": "#/components/schemas/Transcript"}
    elif path.endswith("/import/{source}"):
        schema = {
            "type": ["array", "object"],
            "description": "The other tool's export file, as it is.",
        }
    else:
        return
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": schema}},
    }


class CompletedJsonRenderPlugin(JsonRenderPlugin):
    """Serves the completed document at ``/schema/openapi.json``."""

    def __init__(self, completed: Completed) -> None:
        super().__init__()
        self.completed = completed
        self._page: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._page is None:
            self._page = self.render_json(request, self.completed(openapi_schema))
        return self._page


# Swagger UI's files, from the swagger-ui-bundle package, under a path naming their version
# (so that browsers may keep them for good).
SWAGGER_UI_PATH = f"/schema/{swagger_ui_path.name}"
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


class SwaggerPage(SwaggerRenderPlugin):
    """Litestar's Swagger UI page at ``/schema``, showing the completed document, with Swagger
    UI's files served from this package instead of a CDN: it works offline, and nothing on it
    loads from elsewhere (``schema_headers`` gives it a content security policy)."""

    def __init__(self, completed: Completed) -> None:
        super().__init__(
            path="/",
            js_url=f"{SWAGGER_UI_PATH}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_UI_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER_UI_PATH}/swagger-ui-standalone-preset.js",
            favicon=f'<link rel="icon" href="{SWAGGER_UI_PATH}/favicon-32x32.png">',
            style=f'<link rel="stylesheet" href="{SWAGGER_UI_PATH}/index.css">',
        )
        self.completed = completed
        self._page: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._page is None:
            self._page = super().render(request, self.completed(openapi_schema))
        return self._page

    def receive_router(self, router: Router) -> None:
        router.register(
            create_static_files_router(
                path=SWAGGER_UI_PATH.removeprefix(router.path),
                directories=[swagger_ui_path],
                name="swagger-ui",
                cache_control=CacheControlHeader(max_age=31_536_000, public=True),
            )
        )


async def schema_headers(response: Any) -> Any:
    """An ``after_request`` hook for everything under ``/schema``. An HTML page gets a content
    security policy allowing scripts and styles from this server only, and its own inline
    scripts by their hashes (the Swagger UI page has one: it holds the document). Swagger UI's
    files pass as they are."""
    if not isinstance(response, Response):
        return response
    response.headers["x-content-type-options"] = "nosniff"
    media_type = str(getattr(response.media_type, "value", response.media_type))
    if isinstance(response.content, bytes) and media_type.startswith("text/html"):
        hashes = "".join(
            f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
            for script in _INLINE_SCRIPT.findall(response.content)
        )
        response.headers["content-security-policy"] = (
            f"default-src 'none'; script-src 'self'{hashes}; style-src 'self'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
    return response


def schema_router() -> tuple[Router, list[OpenAPIRenderPlugin]]:
    """The router serving ``/schema`` and the pages on it: the API explorer (Swagger UI) and
    ``openapi.json``, both showing one completed document."""
    completed = Completed()
    router = Router(
        "/schema", route_handlers=[], include_in_schema=False, after_request=schema_headers
    )
    return router, [CompletedJsonRenderPlugin(completed), SwaggerPage(completed)]
