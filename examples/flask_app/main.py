"""A Flask app with one portability problem.

``/export`` builds a CSV in a ``NamedTemporaryFile``: the runtime's ``tempfile`` offered only
an in-memory ``TemporaryFile``, so the sandbox refuses it (HTTP 500) and ``gae-sandbox check``
flags it. The fix is in README.md.
"""

import csv
import io
import tempfile

from flask import Flask, Response, render_template

app = Flask(__name__)

TASKS = [
    {"title": "Port the app to the sandbox", "done": True},
    {"title": "Run gae-sandbox check", "done": True},
    {"title": "Fix what report mode lists", "done": False},
]


@app.route("/")
def index():
    return render_template("index.html", tasks=TASKS)


@app.route("/api/tasks")
def tasks():
    return {"tasks": TASKS}


@app.route("/export")
def export():
    # Portability problem: a named temporary file on disk.
    with tempfile.NamedTemporaryFile("w+", suffix=".csv") as spool:
        writer = csv.DictWriter(spool, fieldnames=["title", "done"])
        writer.writeheader()
        writer.writerows(TASKS)
        spool.seek(0)
        data = spool.read()
    return Response(data, mimetype="text/csv")


@app.route("/export-fixed")
def export_fixed():
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["title", "done"])
    writer.writeheader()
    writer.writerows(TASKS)
    return Response(buffer.getvalue(), mimetype="text/csv")
