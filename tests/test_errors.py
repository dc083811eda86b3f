"""engine.errors.one_line: the one way an exception or a text becomes a one-line message."""
from __future__ import annotations

from engine import one_line


def test_one_line_joins_every_line_and_run_of_whitespace():
    assert one_line(ValueError("  bad header\n\tat line 3\r\n  column 7 ")) == "bad header at line 3 column 7"
    assert one_line("a\u00a0\u2028b") == "a b"  # Unicode spaces and line separators too


def test_one_line_is_empty_when_there_is_nothing_to_say():
    assert one_line(RuntimeError()) == "" and one_line(" \n ") == ""
    assert (one_line(EOFError()) or "unknown error") == "unknown error"


def test_one_line_cuts_a_long_message_to_the_limit_and_says_so():
    text = "torch says:\n" + "word " * 100
    cut = one_line(text, limit=40)
    assert len(cut) <= 40 and cut.endswith("...") and cut.startswith("torch says: word word")
    assert one_line("short", limit=40) == "short" and one_line("exactly 10", limit=10) == "exactly 10"
    assert one_line("abcdef", limit=2) == ".." and one_line("abc", limit=0) == ""
