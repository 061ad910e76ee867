"""Routes for operators: liveness, readiness and metrics."""

from django.http import HttpResponse
from ninja import Router, Status

from inventory import integrity, metrics
from inventory.http.schemas import Error, Health

router = Router(tags=["operations"])

PROMETHEUS_TEXT = {
    "responses": {
        200: {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"description": "Unauthorized", "content": {"application/json": {"schema": {"type": "object"}}}},
    }
}


@router.get("/healthz", response=Health, auth=None, summary="The process answers")
def healthz(request):
    return {"status": "ok"}


@router.get(
    "/readyz", response={200: Health, 503: Error}, auth=None, summary="The database is reachable and migrated"
)
def readyz(request):
    if integrity.database_ready():
        return {"status": "ok"}
    return Status(503, {"error": "not_ready"})


@router.get(
    "/metrics", summary="Prometheus metrics, every worker process added up", openapi_extra=PROMETHEUS_TEXT
)
def prometheus_metrics(request):
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
