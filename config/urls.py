from django.http import JsonResponse
from django.urls import path, re_path

from inventory.api import api


def not_found(request, *args, **kwargs):
    return JsonResponse({"error": "not_found"}, status=404)


urlpatterns = [
    path("", api.urls),
    # Any other path, including an <id> that is not a UUID, gets the same JSON 404.
    re_path(r"", not_found, name="not_found"),
]

handler404 = not_found
