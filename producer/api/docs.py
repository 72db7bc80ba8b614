"""The API's description: /openapi.json (generated from the pydantic models) and /docs (Swagger UI).

Swagger UI 5 (it renders OpenAPI 3.1) comes as static files inside the `flask-openapi3-swagger` package, installed
without its framework (pyproject.toml `[tool.voicefarm] no-deps`) and never imported: the farm serves the files
itself, so the page loads nothing from outside the farm.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory

bp = Blueprint("docs", __name__)
_ASSETS = {"css/swagger-ui.css", "js/swagger-ui-bundle.js", "js/swagger-ui-standalone-preset.js", "images/swagger.svg"}


def _assets_dir() -> Path:
    spec = importlib.util.find_spec("flask_openapi3_swagger")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        abort(404)
    return Path(next(iter(spec.submodule_search_locations))) / "templates" / "swagger"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voicefarm API</title>
<link rel="stylesheet" href="/docs/assets/css/swagger-ui.css"><link rel="icon" href="/docs/assets/images/swagger.svg">
</head><body><div id="swagger-ui"></div>
<script src="/docs/assets/js/swagger-ui-bundle.js"></script>
<script src="/docs/assets/js/swagger-ui-standalone-preset.js"></script>
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


@bp.get("/docs/assets/<path:name>")
def asset(name: str) -> Response:
    if name not in _ASSETS:
        abort(404)
    return send_from_directory(_assets_dir(), name, max_age=86400)
