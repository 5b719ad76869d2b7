"""Request-scoped dependencies: the app's services and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sight.api import bodies
from sight.errors import AuthenticationError, InvalidInputError
from sight.services import Services
from sight.storage.keys import Principal


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def key_from_header(value: str | None) -> str | None:
    """``Authorization: Bearer <key>`` or the bare ``Authorization: <key>`` family-2 clients send."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    return value.strip()


async def authenticate(request: Request, body_key: str | None = None) -> Principal:
    """Check the key from the header and/or the body field; both present and different is a 400."""
    header_key = key_from_header(request.headers.get("authorization"))
    if header_key and body_key and header_key != body_key:
        raise InvalidInputError("the api_key field and the Authorization header carry different keys")
    key = header_key or body_key
    if not key:
        raise AuthenticationError("missing API key: send Authorization: Bearer <key> or the api_key field")
    return await get_services(request).keys.verify(key)


async def header_principal(request: Request) -> Principal:
    return await authenticate(request)


PrincipalDep = Annotated[Principal, Depends(header_principal)]


async def json_body_principal(request: Request) -> Principal:
    """The caller of a JSON route that also takes ``api_key`` in its body. FastAPI solves dependencies before
    it validates the body, so a request without a valid key answers 401 whatever else is wrong with it."""
    body_key = None
    try:
        parsed = bodies.loads(await request.body(), get_services(request).settings.server.max_json_depth)
    except ValueError:
        parsed = None  # the body's own validation reports it, once the caller is known
    if isinstance(parsed, dict) and isinstance(parsed.get("api_key"), str):
        body_key = parsed["api_key"]
    return await authenticate(request, body_key)


BodyPrincipalDep = Annotated[Principal, Depends(json_body_principal)]
