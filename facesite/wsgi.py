"""WSGI entry point for gunicorn (its configuration: recognition/web/gunicorn.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

application = get_wsgi_application()
