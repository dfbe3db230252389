"""The third-party notices tunelab's programs silence, and only those."""

from __future__ import annotations

import logging

import pytest

from tunelab.logs import NOTICES, quiet_library_notices


@pytest.mark.parametrize(("name", "message"), [(name, prefix + " (the rest of the notice)")
                                               for name, prefixes in NOTICES.items() for prefix in prefixes])
def test_a_listed_notice_is_dropped_and_the_logger_still_speaks(name, message, caplog):
    quiet_library_notices()
    quiet_library_notices()  # twice: one filter, not two
    with caplog.at_level(logging.WARNING, logger=name):
        logging.getLogger(name).warning(message)
        logging.getLogger(name).warning("something the user can act on")
    assert [r.getMessage() for r in caplog.records if r.name == name] == ["something the user can act on"]
    assert len(logging.getLogger(name).filters) == 1
