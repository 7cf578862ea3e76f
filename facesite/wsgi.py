"""WSGI entry point for gunicorn (its configuration: recognition/web/gunicorn.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

application = get_wsgi_application()

# On AWS the web tier does not start with the public development key or without an admin
# password (the worker and the scaler need neither, so this is checked here, not in settings).
from django.conf import settings  # noqa: E402

settings.CONFIG.require_secure_web()
