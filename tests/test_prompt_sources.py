"""Prompt sources (treesdk.training.prompts): text, CSV/TSV, JSONL, JSON (HPDv2 styles), parquet, datasets folders."""

from __future__ import annotations

import json

import pytest

from treesdk.training.prompts import load_prompts

PROMPTS = ["a red fox in snow", "the digit seven", "a lighthouse at dusk"]


def test_text_file_skips_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n" + "\n\n".join(PROMPTS) + "\n")
    assert load_prompts(path) == PROMPTS
    with pytest.raises(ValueError, match="plain text file"):
        load_prompts(path, column="prompt")


def test_csv_and_tsv_default_and_named_columns(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("id,caption,score\n" + "".join(f'{i},"{p}",0.5\n' for i, p in enumerate(PROMPTS)))
    assert load_prompts(csv_path) == PROMPTS  # "caption" is a default column name
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\tmy_text\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(PROMPTS)))
    assert load_prompts(tsv, column="my_text") == PROMPTS
    with pytest.raises(ValueError, match="name one with --prompt-column .*id, my_text"):
        load_prompts(tsv)
    with pytest.raises(ValueError, match="'nope' is not in .*id, my_text"):
        load_prompts(tsv, column="nope")


def test_jsonl_objects_and_strings(tmp_path):
    objects = tmp_path / "metadata.jsonl"  # Flow-GRPO's GenEval metadata.jsonl
    objects.write_text("".join(json.dumps({"tag": "x", "prompt": p}) + "\n" for p in PROMPTS))
    assert load_prompts(objects) == PROMPTS
    strings = tmp_path / "s.jsonl"
    strings.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    assert load_prompts(strings) == PROMPTS
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_prompts(bad)


def test_hpdv2_style_json_files(tmp_path):
    benchmark = tmp_path / "anime.json"  # HPDv2 benchmark prompt file: a list of strings
    benchmark.write_text(json.dumps(PROMPTS))
    assert load_prompts(benchmark) == PROMPTS
    train = tmp_path / "train.json"  # HPDv2 train/test: objects with "prompt"
    train.write_text(json.dumps([{"prompt": p, "image_path": ["a.jpg", "b.jpg"], "human_preference": [0, 1]}
                                 for p in PROMPTS]))
    assert load_prompts(train) == PROMPTS
    styles = tmp_path / "all.json"  # hpsv2.benchmark_prompts("all") dumped: style -> prompts
    styles.write_text(json.dumps({"anime": PROMPTS[:2], "photo": PROMPTS[2:]}))
    assert load_prompts(styles) == PROMPTS
    assert load_prompts(styles, column="photo") == PROMPTS[2:]


def test_missing_source_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_prompts(tmp_path / "nope.csv")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_prompts(empty)


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [0, 1, 2], "text": PROMPTS}), path)
    assert load_prompts(path) == PROMPTS
    assert load_prompts(path, column="text") == PROMPTS


def test_local_datasets_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"caption": PROMPTS, "n": [1, 2, 3]}).save_to_disk(str(single))
    assert load_prompts(single) == PROMPTS
    split = tmp_path / "dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"prompt": PROMPTS}),
        "test": datasets.Dataset.from_dict({"prompt": PROMPTS[:1]}),
    }).save_to_disk(str(split))
    assert load_prompts(split) == PROMPTS
    assert load_prompts(split, split="test") == PROMPTS[:1]
    with pytest.raises(ValueError, match="no split 'val'; its splits are: train, test"):
        load_prompts(split, split="val")
    files = tmp_path / "files"  # a plain folder of data files, read by datasets.load_dataset
    files.mkdir()
    (files / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert load_prompts(files) == PROMPTS
