#!/usr/bin/env python
"""Django's command-line utility for facesite."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as error:
        # A misconfiguration is the operator's to fix: one line naming it, not a traceback.
        sys.exit(f"facesite: {error}")


if __name__ == "__main__":
    main()
