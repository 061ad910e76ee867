from django.core.exceptions import DisallowedHost
from django.http import JsonResponse
from django.urls import path, re_path

from inventory.http.api import api


def not_found(request, *args, **kwargs):
    return JsonResponse({"error": "not_found"}, status=404)


urlpatterns = [
    path("", api.urls),
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
