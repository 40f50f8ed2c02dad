"""Views of the Django example; ``report`` carries its portability problem."""

import os
from datetime import datetime, timezone

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

BOOKS = ["Structure and Interpretation of Computer Programs", "The Art of Unix Programming"]


def home(request):
    return render(request, "home.html", {"books": BOOKS})


def server_time(request):
    return JsonResponse({"now": datetime.now(timezone.utc).isoformat()})


def report(request):
    # Portability problem: the report is saved under MEDIA_ROOT on the local disk.
    os.makedirs(settings.MEDIA_ROOT, exist_ok=True)
    path = os.path.join(settings.MEDIA_ROOT, "books.txt")
    with open(path, "w") as out:
        out.write("\n".join(BOOKS))
    return HttpResponse(f"saved {len(BOOKS)} books", content_type="text/plain")
