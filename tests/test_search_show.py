"""The table `run_search.py show` prints."""

from search import format_table


def test_columns_are_right_aligned_numbers_readable_and_none_blank():
    rows = [
        {"number": 3, "state": "COMPLETE", "val_bpc": 2.50213, "tokens_per_s": 20771.4, "reason": None},
        {"number": 12, "state": "PRUNED", "val_bpc": 3.1, "tokens_per_s": None, "reason": "lagging loss " + "x" * 60},
    ]
    lines = format_table(rows, ["number", "state", "val_bpc", "tokens_per_s", "reason"], max_width=20).splitlines()
    assert lines[0].split() == ["number", "state", "val_bpc", "tokens_per_s", "reason"]
    assert lines[1].split() == ["3", "COMPLETE", "2.502", "20771"]
    assert lines[2].split() == ["12", "PRUNED", "3.1", "lagging", "loss", "xxxx..."]
    assert len({len(line) for line in lines[::2]}) == 1  # full rows line up with the header
    assert lines[0].index("val_bpc") + len("val_bpc") == lines[1].index("2.502") + len("2.502")
