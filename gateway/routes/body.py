"""How a POST body becomes a handler's `data`: JSON only, decoded strictly into the handler's msgspec struct.

    Content-Type other than application/json  -> 415  (a cross-site form or `text/plain` fetch cannot post here)
    empty body                                 -> 400  "a JSON body is required"
    not JSON, or nested too deeply             -> 400
    wrong type (`"k": "10"`), unknown field    -> 422 naming the field

Litestar's default decodes the body into plain Python objects and then converts them to the struct with
strict=False, which coerces `"10"` to 10 and lets a 2 KB body of nested brackets exhaust the recursion limit
(a RecursionError, i.e. a 500). Decoding the bytes straight into the struct rejects both on the first wrong
token, and costs less than the two steps it replaces.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.types import Empty

from gateway.routes.errors import ApiError

JSON = "application/json"
NESTED_TOO_DEEPLY = ("the JSON body is nested too deeply: send the flat object the OpenAPI schema describes "
                     "(/docs)")


async def require_json_body(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for handlers that take a body: refuse other media types, and an empty body, before decoding."""
    media_type = connection.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != JSON:
        given = f"got {media_type!r}" if media_type else "no Content-Type header was sent"
        raise ApiError(415, f"send the body as JSON with the header Content-Type: {JSON} ({given})",
                       field="Content-Type")
    if not await connection.body():
        raise ApiError(400, "a JSON body is required: send the request's fields as a JSON object (see /docs)")


class JsonRequest(Request):
    """A Request whose `json()` decodes into the route's msgspec struct, strictly; other routes keep Litestar's
    decoding. Neither lets a RecursionError out."""

    async def json(self) -> Any:
        field = self.route_handler.parsed_data_field
        target = field.annotation if field is not None else None
        if not (isinstance(target, type) and issubclass(target, msgspec.Struct)):
            try:
                return await super().json()
            except RecursionError:
                raise ApiError(400, NESTED_TOO_DEEPLY) from None
        if self._json is Empty:
            if (decoded := self._connection_state.json) is not Empty:
                self._json = decoded
            else:
                self._json = self._connection_state.json = _decode(await self.body(), target)
        return self._json


def _decode(body: bytes, target: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.json.decode(body, type=target)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Expected") and " - at `$" not in message:  # about the body itself, not a field
            message = f"the body must be a JSON object with the fields in the OpenAPI schema (/docs): {message}"
        # The shape the validation handler reads for every other validation problem: the field is in the message.
        raise ValidationException(message, extra=[{"message": message, "key": "data", "source": "body"}]) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc}): send a JSON object that matches the OpenAPI "
                            "schema (/docs)") from None
    except RecursionError:
        raise ApiError(400, NESTED_TOO_DEEPLY) from None
