"""The change feed: GET /events."""

from ninja import Query, Router

from inventory import events
from inventory.http import cursors
from inventory.http.schemas import Error, EventPage, FeedQuery, read_responses

router = Router(tags=["events"])


@router.get(
    "/events",
    response=read_responses({200: EventPage, 400: Error, 410: Error}),
    summary="The change feed, in commit order: keep `next` and poll with it",
)
def list_events(request, query: Query[FeedQuery]):
    after = None if query.after is None else cursors.decode_id(query.after, field="after")
    page, position = events.event_list(after=after, limit=query.limit)
    return {"events": [events.event_body(event) for event in page], "next": cursors.encode(position)}
