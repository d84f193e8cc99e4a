"""How many examples the Hypothesis tests draw: one knob for the whole suite.

Each test states the count it was written for; the everyday run draws a
quarter of it (at least 10) so the suite stays fast on two cores, and
``FOREMAN_TEST_EXAMPLES=1`` (or more) draws the full count or a multiple for
a thorough run. Tests without a count get Hypothesis' 100, scaled the same way
by the profile ``tests/conftest.py`` loads.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("FOREMAN_TEST_EXAMPLES", "0.25"))


def examples(written_for: int) -> int:
    """The example count to draw for a test written for ``written_for``."""
    return max(10, round(written_for * SCALE))
