"""antigrok.files: a results file is either complete or absent, never half written."""

from __future__ import annotations

import pandas as pd
import pytest

from antigrok.files import partial_path, write_atomically, write_csv_atomically, write_text_atomically


def test_csv_is_written_as_to_csv_writes_it(tmp_path):
    table = pd.DataFrame({"step": [0, 10], "alpha": [2.5, float("nan")]})
    write_csv_atomically(table, tmp_path / "sub" / "table.csv")
    table.to_csv(tmp_path / "direct.csv", index=False)
    assert (tmp_path / "sub" / "table.csv").read_bytes() == (tmp_path / "direct.csv").read_bytes()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["table.csv"]


def test_a_write_that_fails_leaves_the_old_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_text("old, complete\n")

    def fail_halfway(self, path, **kwargs):
        with open(path, "w") as stream:
            stream.write("step,al")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_csv_atomically(pd.DataFrame({"step": [1]}), target)
    assert target.read_text() == "old, complete\n"


def test_text_replaces_the_file_in_one_rename(tmp_path):
    target = tmp_path / "table.md"
    write_text_atomically(target, "first")
    write_text_atomically(target, "second")
    assert target.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "step000001.pt"

    def fail_halfway(partial):
        partial.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_halfway)
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_name_matches_no_glob_of_finished_files(tmp_path):
    for name in ("step000001.pt", "htsr.csv", "spectra.npz", "fig.png"):
        assert not partial_path(tmp_path / name).match("*" + name[name.index("."):])
        assert not partial_path(tmp_path / name).match("step*.pt")
