"""A python3-runtime Flask app, as App Engine's own samples are written: ``main.py`` holds
``app`` and app.yaml has only ``runtime:`` and handlers with ``script: auto``.

``/cache`` writes its cache under ``/tmp`` (the runtime's in-memory folder: allowed);
``/save`` writes into the app's folder (read-only on the runtime: refused, HTTP 500). The fix
is in README.md.
"""

import json
import os
import tempfile

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return ('<link rel="stylesheet" href="/static/site.css">'
            f"<p>Hello from {os.environ.get('GAE_RUNTIME', 'python3')}</p>")


@app.route("/cache")
def cache():
    path = os.path.join(tempfile.gettempdir(), "python3_app_cache.json")
    with open(path, "w") as file:
        json.dump({"visits": 1}, file)
    with open(path) as file:
        return {"cached": json.load(file)}


@app.route("/save")
def save():
    # Portability problem: the app's own folder is read-only on the runtime.
    with open(os.path.join(os.path.dirname(__file__), "saved.json"), "w") as file:
        json.dump({"saved": True}, file)
    return {"saved": True}
