import errno
import json

import pytest

from progdistill.core.files import (
    DiskFullError,
    MetricsWriter,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    disk_full,
    read_metrics,
)


def test_metrics_writer_and_reader_round_trip(tmp_path):
    records = [{"step": 0, "eval_accuracy": 0.5, "name": "x"}, {"step": 10, "eval_accuracy": 0.75, "flag": True}]
    writer = MetricsWriter(tmp_path / "sub" / "m.jsonl")  # the parent is created
    for record in records:
        writer.write(record)
    writer.close()
    assert read_metrics(tmp_path / "sub" / "m.jsonl") == records
    assert (tmp_path / "sub" / "m.jsonl").read_text().count("\n") == 2  # one complete line per record


def test_rewrite_replaces_every_earlier_line(tmp_path):
    writer = MetricsWriter(tmp_path / "m.jsonl")
    for step in (0, 10, 20):
        writer.write({"step": step})
    writer.rewrite([{"step": 0}])
    writer.write({"step": 5})
    writer.close()
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 0}, {"step": 5}]


def test_metrics_reader_tolerates_a_truncated_final_line(tmp_path):
    writer = MetricsWriter(tmp_path / "m.jsonl")
    writer.write({"step": 0, "eval_accuracy": 0.5})
    writer.write({"step": 10, "eval_accuracy": 0.6})
    writer.close()
    with open(tmp_path / "m.jsonl", "a") as fh:
        fh.write('{"step": 20, "eval_acc')
    with pytest.warns(UserWarning, match="truncated final line 3"):
        assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl")] == [0, 10]
    with pytest.raises(ValueError, match="m.jsonl: line 3 is not valid JSON"):
        read_metrics(tmp_path / "m.jsonl", strict=True)  # a finished model's metrics: refused
    (tmp_path / "bad.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics(tmp_path / "bad.jsonl")


def test_atomic_writes_leave_the_content_and_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    atomic_write_text(tmp_path / "a.txt", "new text")
    atomic_write_json(tmp_path / "b.json", {"x": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "new text"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "kept")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_full_disk_is_one_error_naming_the_file(tmp_path):
    def full(tmp):
        tmp.write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"no space left .* writing .*a\.txt") as info:
        atomic_write(tmp_path / "a.txt", full)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_follows_the_chain_of_causes():
    assert disk_full(OSError(errno.EDQUOT, "quota"))
    assert disk_full(RuntimeError("PytorchStreamWriter failed: No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "x")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(OSError(errno.EACCES, "Permission denied")) and not disk_full(None)
