from django.core.exceptions import DisallowedHost
from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.http import require_GET

from inventory.http.api import api


def not_found(request, *args, **kwargs):
    return JsonResponse({"error": "not_found"}, status=404)


api_patterns, app_name, namespace = api.urls
for pattern in api_patterns:
    # ninja serves its document and docs page to any method; they answer GET (and HEAD) only.
    if pattern.name in ("openapi-json", "openapi-view"):
        pattern.callback = require_GET(pattern.callback)

urlpatterns = [
    path("", (api_patterns, app_name, namespace)),
    # Any other path, including an <id> that is not a UUID, gets the same JSON 404.
    re_path(r"", not_found, name="not_found"),
]


def bad_request(request, exception=None):
    """A 400 raised outside the views, e.g. by SecurityMiddleware's HTTPS redirect, which asks
    for the host before json_errors can: a disallowed one is refused there."""
    message = "host not allowed" if isinstance(exception, DisallowedHost) else "bad_request"
    return JsonResponse({"error": message}, status=400)


handler400 = bad_request
handler404 = not_found
