"""read_back.py: a value read back from a file ptune wrote is checked with its type and domain."""

import pytest

from ptune_dist.errors import PtuneError
from ptune_dist.read_back import count, job_id, list_of, mapping, name, number, one_of, read_record, text, value


@pytest.mark.parametrize(
    "content,fragment", [("", "not a job record (not JSON"), ("[1]", "a JSON list, not an object"), ("{", "not JSON")]
)
def test_read_record_names_the_file(tmp_path, content, fragment):
    path = tmp_path / "job.json"
    path.write_text(content)
    with pytest.raises(PtuneError, match="job.json") as e:
        read_record(path, "a job record", "submit again")
    assert fragment in str(e.value) and "submit again" in str(e.value)


def test_missing_record(tmp_path):
    assert read_record(tmp_path / "x.json", "a record", "r", missing_ok=True) is None
    with pytest.raises(PtuneError, match="missing"):
        read_record(tmp_path / "x.json", "a record", "r")


@pytest.mark.parametrize(
    "key,check,good,bad",
    [
        ("step", count, 3, [True, -1, 2.0, "3"]),
        ("id", name, "m1_p20", ["../x", "..", "a/b", "-rf", "", 7, "m1\n"]),  # issue 21: `$` let a final newline in
        ("job_ids", list_of(job_id), ["12", "13_4"], ["4242", [4242], ["--user=x"], ["1\n2"], ["12\n"], ["\uff11"]]),
        ("status", one_of("done", "failed"), "done", ["ok", None]),
        ("what", text, "x", ["", 0]),
        ("score", number, 0.5, [True, "0.5", float("nan"), float("inf"), None]),
        ("parameters", mapping, {"base": 1}, [[], "x", None]),
    ],
)
def test_value_checks_type_and_domain(tmp_path, key, check, good, bad):
    assert value({key: good}, key, check, "f.json", "r") == good
    for v in bad:
        with pytest.raises(PtuneError, match=f"f.json: {key}=") as e:
            value({key: v}, key, check, "f.json", "fix it")
        assert str(e.value).endswith("fix it")
    assert value({}, key, check, "f.json", "r", default=None) is None
    with pytest.raises(PtuneError, match=f"'{key}' is missing"):
        value({}, key, check, "f.json", "r")
