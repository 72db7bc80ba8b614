"""The API's description: /openapi.json (generated from the pydantic models) and /docs (Swagger UI).

Swagger UI's files come from the `swagger-ui-bundle` package and are served by the farm itself: the page loads
nothing from outside the farm.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

bp = Blueprint("docs", __name__)
_ASSETS = {"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voicefarm API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"><link rel="icon" href="/docs/assets/favicon-32x32.png">
</head><body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script src="/docs/init.js"></script>
</body></html>
"""
_INIT = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
  validatorUrl: null});
"""


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(current_app.extensions["voicefarm.openapi"])


@bp.get("/docs")
def docs() -> Response:
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/init.js")
def init_js() -> Response:
    return Response(_INIT, mimetype="text/javascript")


@bp.get("/docs/assets/<name>")
def asset(name: str) -> Response:
    if name not in _ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, name, max_age=86400)
