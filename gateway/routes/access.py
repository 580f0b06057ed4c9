"""Who may read what. Searches and feedback are open (they are the product); the rest is not:

    /v1/admin/*                               the admin key                (routes/admin.py)
    /dashboard*, report.json, /v1/experiments the viewer key or the admin key

A key is sent as `X-API-Key: KEY`, or as the password of HTTP basic auth (any user name), which a browser asks
for on the 401. With no viewer and no admin key configured, the read surface is open only while the gateway is
bound to a loopback address (a laptop); the gateway logs that it is open. Salts are never served: with a salt,
every unit's arm can be predicted.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from gateway.routes.errors import ApiError

API_KEY_HEADER = "X-API-Key"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_surface_open(settings) -> bool:
    """No key configured and bound to loopback: the read surface needs no key."""
    return not (settings.viewer_api_key or settings.admin_api_key) and is_loopback(settings.host)


def _given_key(connection: ASGIConnection) -> str:
    key = connection.headers.get(API_KEY_HEADER)
    if key:
        return key
    auth = connection.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return ""
    return ""


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message, field=API_KEY_HEADER)
        self.headers = {"WWW-Authenticate": 'Basic realm="abgate"'}


def require_viewer(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    settings = connection.app.state.settings
    if read_surface_open(settings):
        return
    accepted = [k for k in (settings.viewer_api_key, settings.admin_api_key) if k]
    if not accepted:
        raise ApiError(403, "the dashboards and experiment details are closed: this gateway listens beyond "
                            "localhost and has no ABGATE_VIEWER_API_KEY; set one to open them")
    given = _given_key(connection).encode()
    if not any(secrets.compare_digest(given, k.encode()) for k in accepted):
        raise Unauthorized(f"send the viewer (or admin) key in the {API_KEY_HEADER} header, or as the password "
                           "of HTTP basic auth")
