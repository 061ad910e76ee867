"""The WSGI application, with request bodies read whatever their framing."""

import io
import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def read_chunked_bodies(app):
    """A body sent with `Transfer-Encoding: chunked` has no CONTENT_LENGTH, and Django reads
    such a body as empty. Read it here, at most one byte past DATA_UPLOAD_MAX_MEMORY_SIZE,
    and hand it on with its length: a larger body then gets Django's RequestDataTooBig (413),
    as one framed by Content-Length does. The server has already decoded the chunks (PEP 3333:
    wsgi.input yields the body's bytes)."""

    def application(environ, start_response):
        if (
            not environ.get("CONTENT_LENGTH")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
            body = io.BytesIO()
            while body.tell() < limit:
                chunk = environ["wsgi.input"].read(min(65536, limit - body.tell()))
                if not chunk:
                    break
                body.write(chunk)
            environ["CONTENT_LENGTH"] = str(body.tell())
            environ["wsgi.input"] = io.BytesIO(body.getvalue())
        return app(environ, start_response)

    return application


application = read_chunked_bodies(get_wsgi_application())
