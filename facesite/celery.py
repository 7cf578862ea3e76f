"""The Celery app: tasks travel over Amazon SQS (moto locally), one queue, metadata only."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

app = Celery("facesite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
