"""Django's own ``timesince``, the oracle for ``created_ago`` (Django is a test-only dependency).

Label Studio renders ``created_ago`` with ``django.utils.timesince.timesince(created_at)``; the fake Label Studio
and the proxy's property tests both call it through here, so neither agrees with the proxy merely because we wrote
both sides.
"""

from __future__ import annotations

from datetime import datetime

import django.conf  # type: ignore[import-untyped]
import django.utils.timesince  # type: ignore[import-untyped]


def _configure_django() -> None:
    """Settings for ``timesince`` alone, once per process: English without translations, aware datetimes."""
    if not django.conf.settings.configured:
        django.conf.settings.configure(USE_I18N=False, USE_TZ=True)


def timesince(then: datetime, now: datetime) -> str:
    """``created_ago`` as Label Studio renders it: Django's ``timesince(then, now)`` with its default depth, 2."""
    _configure_django()
    return str(django.utils.timesince.timesince(then, now))
