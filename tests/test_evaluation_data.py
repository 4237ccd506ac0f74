"""Data loading from JSONL, parquet and Hugging Face folders; field checks; shards."""

import json

import pytest

from d2cache_jax.evaluation import data
from tests.evaluation_helpers import fixture

GSM8K_FORMS = ["gsm8k_test.jsonl", "gsm8k_test.parquet", "hf_save_to_disk/gsm8k", "hf_hub", "hf_datasets_cache"]


@pytest.mark.parametrize("form", GSM8K_FORMS)
def test_every_format_gives_the_same_records(form):
    with open(fixture("gsm8k_test.jsonl")) as f:
        want = [json.loads(line) for line in f]
    assert data.load_records(fixture(form), "test") == want


@pytest.mark.parametrize("form", ["hf_save_to_disk/gsm8k", "hf_hub", "hf_datasets_cache"])
def test_folders_pick_the_requested_split(form):
    train = data.load_records(fixture(form), "train")
    assert len(train) == 7 and train[0]["question"].startswith("Ann has 2 cards")


@pytest.mark.parametrize("task", ["math500", "humaneval", "mbpp"])
def test_parquet_matches_jsonl(task):
    assert data.load_records(fixture(f"{task}_test.parquet")) == data.load_records(fixture(f"{task}_test.jsonl"))


def test_missing_field_is_a_clear_error():
    records = data.load_records(fixture("gsm8k_test.jsonl"))
    records[1] = {"question": "q"}
    with pytest.raises(ValueError, match=r"record 1 lacks \['answer'\]"):
        data.check_fields(records, ("question", "answer"), "f.jsonl", "gsm8k")


def test_unknown_split_and_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="validation"):
        data.load_records(fixture("hf_hub"), "validation")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_records(str(tmp_path / "nope.jsonl"))


def test_split_in_two_places_is_ambiguous(tmp_path):
    for config in ("main", "socratic"):
        (tmp_path / config).mkdir()
        (tmp_path / config / "test.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ValueError, match="several places"):
        data.load_records(str(tmp_path), "test")
    assert data.load_records(str(tmp_path / "main"), "test") == [{"question": "q", "answer": "a"}]


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        data.load_records(str(path))


def test_shards_split_contiguously_and_cover_everything():
    assert data.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "a/b", "1", "-1/2", "0/0"):
        with pytest.raises(ValueError):
            data.parse_shard(bad)
    parts = [list(data.shard_range(10, i, 3)) for i in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
