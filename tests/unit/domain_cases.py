"""What the domain's unit tests share: zones, a UTC shorthand, deterministic hypothesis, any text."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from hypothesis import settings
from hypothesis import strategies as st

CHICAGO = ZoneInfo("America/Chicago")
UTC = timezone.utc
# Same examples on every run: a failure here is the code's, not the seed's.
deterministic = settings(derandomize=True, database=None, deadline=None)
# Any text: control characters, line breaks, lone surrogates (JSON carries them), any plane.
any_text = st.text(alphabet=st.characters(exclude_categories=()))


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def is_clean(text: str, limit: int) -> bool:
    """On one line, no control character or surrogate, single-spaced, stripped, within `limit` UTF-8 bytes."""
    return (
        not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in text)
        and text == " ".join(text.split())
        and len(text.encode("utf-8")) <= limit
    )
