"""Request bodies, decoded by the DTO every route uses (set once, on the app).

Without a DTO, Litestar parses a JSON body to plain values and converts them to the handler's
type in msgspec's lax mode, which takes ``"true"`` for a boolean, ``"5"`` for an integer and
``"null"`` for null. ``StrictBody`` decodes the body's bytes straight into the handler's type
in msgspec's strict mode instead (an integer still fits a float field), so a value of the wrong
JSON type is refused with its field named, as a ``ValidationException`` like the framework's
own. Form fields are text by nature and are still converted from it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
from litestar.dto import AbstractDTO, DTOFieldDefinition
from litestar.exceptions import SerializationException, ValidationException

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto._backend import DTOBackend
    from litestar.openapi.spec import Reference, Schema
    from litestar.typing import FieldDefinition


class StrictBody(AbstractDTO[Any]):
    """Decodes each handler's ``data`` into the type it declares (the same type documents it in
    the OpenAPI schema); leaves responses to Litestar's own encoding."""

    # Each handler's decoder, by handler id (as Litestar keeps its DTOs' backends).
    _decoders: ClassVar[dict[str, msgspec.json.Decoder[Any]]] = {}

    @classmethod
    def create_for_field_definition(
        cls,
        field_definition: FieldDefinition,
        handler_id: str,
        backend_cls: type[DTOBackend] | None = None,
    ) -> None:
        cls._decoders[handler_id] = msgspec.json.Decoder(field_definition.annotation, strict=True)

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        return schema_creator.for_field_definition(field_definition)

    @classmethod
    def is_supported_model_type_field(cls, field_definition: FieldDefinition) -> bool:
        return False  # never a return DTO: responses are encoded as they are

    def decode_bytes(self, value: bytes) -> Any:
        """A JSON body, strictly; malformed JSON is a 400 (as the framework answers it)."""
        decoder = self._decoders[self.asgi_connection.route_handler.handler_id]
        try:
            try:
                return decoder.decode(value)
            except msgspec.ValidationError as exc:
                # Decoding stops at the first wrong value, maybe before the JSON breaks off:
                # a body that is not JSON at all is told so first.
                msgspec.json.decode(value)
                raise _refusal(exc) from exc
        except msgspec.DecodeError as exc:
            raise SerializationException(str(exc)) from exc

    def decode_builtins(self, value: dict[str, Any]) -> Any:
        """Form fields: text, converted to the declared type (``"1"`` is an integer there)."""
        handler = self.asgi_connection.route_handler
        try:
            return msgspec.convert(
                value,
                self._decoders[handler.handler_id].type,
                strict=False,
                str_keys=True,
                dec_hook=handler.default_deserializer,
            )
        except msgspec.ValidationError as exc:
            raise _refusal(exc) from exc

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        """No fields: the body is decoded into the declared type itself, not transferred."""
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False


def _refusal(exc: msgspec.ValidationError) -> ValidationException:
    """The framework's validation error for a body: its message and the field's path (``data``
    for the body as a whole), so ``service.errors`` renders it as it renders any other."""
    # msgspec ends a message with where the value is: "Expected `bool`, got `str` - at
    # `$.archived`"; a problem with the body as a whole has no such end.
    message, at, where = str(exc).rpartition(" - at `$")
    if not at:
        message, where = where, ""
    key = where.removesuffix("`").removeprefix(".") or "data"
    error = {"message": message, "key": key, "source": "body"}
    return ValidationException(detail="The request body is not valid.", extra=[error])
