"""WSGI entry point for gunicorn (see facesite/gunicorn.py for the server's configuration)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

application = get_wsgi_application()
