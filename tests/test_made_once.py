"""The session-shared folders the costly tests read: made once, and a failed make is said, not redone."""
import pytest

from .helpers import made_once


def test_a_folder_is_made_once_and_a_failed_make_fails_the_next_caller_at_once(tmp_path_factory):
    calls = []

    def make(folder):
        calls.append(folder)
        (folder / "result.txt").write_text("made")

    first = made_once(tmp_path_factory, "once", make)
    assert made_once(tmp_path_factory, "once", make) == first and len(calls) == 1
    assert (first / "result.txt").read_text() == "made"

    def broken(folder):
        calls.append(folder)
        raise RuntimeError("no disk")

    with pytest.raises(RuntimeError, match="no disk"):
        made_once(tmp_path_factory, "broken", broken)
    assert not (first.parent / "broken").exists()  # nothing half made is left to be read
    said = "making broken failed earlier in this session: RuntimeError: no disk"
    with pytest.raises(pytest.fail.Exception, match=said):
        made_once(tmp_path_factory, "broken", broken)
    assert len(calls) == 2  # the failed make was not run again
