"""A webapp-style guestbook in plain WSGI (no framework), as python27 apps were written.

Its portability problem: signing appends to a file next to the app (``entries.log``).
The runtime's files are read-only, so ``gae-sandbox check`` flags the write and the
sandbox refuses it (HTTP 500); the fix is in README.md.
"""

import html
import os
import threading
from urllib.parse import parse_qs

ENTRIES_FILE = os.path.join(os.path.dirname(__file__), "entries.log")
_entries = []
_lock = threading.Lock()


class RequestHandler:
    """The webapp pattern: one class per URL, get() and post() methods."""

    def __init__(self, environ, start_response):
        self.environ = environ
        self.start_response = start_response

    def respond(self, body, status="200 OK", content_type="text/html; charset=utf-8"):
        data = body.encode("utf-8")
        self.start_response(status, [("Content-Type", content_type),
                                     ("Content-Length", str(len(data)))])
        return [data]

    def redirect(self, location):
        self.start_response("303 See Other", [("Location", location), ("Content-Length", "0")])
        return [b""]


class MainPage(RequestHandler):
    def get(self):
        title = html.escape(os.environ.get("GUESTBOOK_TITLE", "Guestbook"))
        with _lock:
            items = "".join(f"<blockquote>{html.escape(e)}</blockquote>" for e in _entries)
        return self.respond(
            f"<!doctype html><html><head><title>{title}</title>"
            '<link rel="stylesheet" href="/static/style.css"></head>'
            f"<body><h1>{title}</h1>{items or '<p>No entries yet.</p>'}"
            '<form action="/sign" method="post"><textarea name="content"></textarea>'
            '<button type="submit">Sign</button></form></body></html>'
        )


class Guestbook(RequestHandler):
    def post(self):
        size = int(self.environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(self.environ["wsgi.input"].read(min(size, 10000)).decode("utf-8"))
        content = form.get("content", [""])[0].strip()
        if content:
            with _lock:
                _entries.append(content)
            # Portability problem: a local file write, refused on the runtime.
            with open(ENTRIES_FILE, "a") as log:
                log.write(content + "\n")
        return self.redirect("/")


ROUTES = {"/": MainPage, "/sign": Guestbook}


def app(environ, start_response):
    handler_class = ROUTES.get(environ.get("PATH_INFO", "/"))
    if handler_class is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Not found\n"]
    handler = handler_class(environ, start_response)
    method = getattr(handler, environ["REQUEST_METHOD"].lower(), None)
    if method is None:
        start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
        return [b"Method not allowed\n"]
    return method()
