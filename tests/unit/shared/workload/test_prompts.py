"""Prompt sources and tokenizers of real-text workloads: real BPE ids, seeded ShareGPT and user files, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lem_shared.workload.prompts import Prompt, load_prompts
from lem_shared.workload.tokenizer import OfflineBPETokenizer, offline_tokenizer, tokenizer_for

TOKENIZER = offline_tokenizer()
HELLO = "Hello world, energy measurement!"
HELLO_IDS = [22557, 1526, 28725, 3408, 15921, 28808]  # ▁Hello ▁world , ▁energy ▁measurement !


def sharegpt_file(path: Path, records: list[Any]) -> str:
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return f"sharegpt:{path}"


def conversation(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"id": "x", "conversations": [{"from": who, "value": text} for who, text in turns]}


def numbered_prompts(n: int) -> list[dict[str, Any]]:
    text = "Explain item number {} of the energy report in detail."
    return [{"prompt": text.format(i), "output_len": 10 + i} for i in range(n)]


# ---- the offline BPE ----


def test_offline_bpe_is_the_32000_id_mistral_sentencepiece_model() -> None:
    assert isinstance(TOKENIZER, OfflineBPETokenizer)
    assert TOKENIZER.vocab_size == 32000
    assert TOKENIZER.bos_id == 1
    assert TOKENIZER.encode(HELLO) == HELLO_IDS
    assert TOKENIZER.decode(HELLO_IDS) == HELLO
    assert TOKENIZER.decode([3408]) == "energy"
    assert TOKENIZER.encode("") == []
    assert offline_tokenizer() is TOKENIZER  # loaded once per process


def test_offline_bpe_round_trips_any_unicode_with_ids_below_32000() -> None:
    text = "Énergie: 能量 測定 ⚡😀 — tab\tnewline\n\u2028 end"
    ids = TOKENIZER.encode(text)
    assert ids == TOKENIZER.encode(text)  # deterministic
    assert all(0 <= i < 32000 for i in ids)
    assert 0 not in ids  # byte fallback: nothing becomes <unk>
    assert TOKENIZER.decode(ids) == text


def test_offline_bpe_refuses_a_non_string() -> None:
    with pytest.raises(ValueError, match="text must be a str, got bytes"):
        TOKENIZER.encode(b"hello")  # type: ignore[arg-type]


def test_tokenizer_for_random_presets_checks_the_vocab_fits() -> None:
    assert tokenizer_for("random:llama-tiny", 32000) is TOKENIZER
    assert tokenizer_for("random:llama-8b", 128256) is TOKENIZER
    with pytest.raises(ValueError, match=r"vocab_size: the offline tokenizer has 32000 ids .* vocab of 31999"):
        tokenizer_for("random:small", 31999)
    for bad in (None, 0, True, "32000"):
        with pytest.raises(ValueError, match="vocab_size: model 'random:llama-tiny' is a random preset"):
            tokenizer_for("random:llama-tiny", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model: expected a hub id"):
        tokenizer_for("  ", None)


def test_tokenizer_for_a_local_folder_uses_its_own_tokenizer(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "hello": 2, "world": 3}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "unk_token": "[UNK]"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))

    hub = tokenizer_for(str(tmp_path), None)
    assert (hub.vocab_size, hub.bos_id) == (4, 1)
    assert hub.encode("hello world zebra hello") == [2, 3, 0, 2]  # no BOS added
    assert hub.decode([2, 3]) == "hello world"
    with pytest.raises(ValueError, match="model: no tokenizer could be loaded for .*missing"):
        tokenizer_for(str(tmp_path / "missing"), None)


# ---- the bundled ShareGPT V3 ----


@pytest.fixture(scope="module")
def sharegpt_seed0() -> list[Prompt]:
    return load_prompts("sharegpt", tokenizer=TOKENIZER, count=100, seed=0)


def test_bundled_sharegpt_lengths_come_from_the_tokenizer(sharegpt_seed0: list[Prompt]) -> None:
    assert len(sharegpt_seed0) == 100
    assert len({p.source_index for p in sharegpt_seed0}) == 100
    for prompt in sharegpt_seed0:
        assert list(prompt.input_ids) == TOKENIZER.encode(prompt.text)
        assert 4 <= prompt.input_len <= 1024 and 4 <= prompt.output_len <= 1024
        assert all(0 <= i < 32000 for i in prompt.input_ids)
    # the first pick of seed 0: a stable fact of the shuffle and the data (random.Random's shuffle is fixed)
    first = sharegpt_seed0[0]
    assert (first.source_index, first.input_len, first.output_len) == (16738, 9, 256)


def test_bundled_sharegpt_is_seeded(sharegpt_seed0: list[Prompt]) -> None:
    again = load_prompts("sharegpt", tokenizer=TOKENIZER, count=100, seed=0)
    assert again == sharegpt_seed0
    fewer = load_prompts("sharegpt", tokenizer=TOKENIZER, count=30, seed=0)
    assert fewer == sharegpt_seed0[:30]  # a larger count extends the list of a smaller one
    other = load_prompts("sharegpt", tokenizer=TOKENIZER, count=100, seed=1)
    assert len({p.source_index for p in other} & {p.source_index for p in sharegpt_seed0}) < 10


def test_bundled_sharegpt_forced_output_and_caps(sharegpt_seed0: list[Prompt]) -> None:
    forced = load_prompts("sharegpt", tokenizer=TOKENIZER, count=20, seed=0, forced_output_len=77)
    assert {p.output_len for p in forced} == {77}
    # the reply filters do not apply, so the picks can only be the same or earlier ones in the shuffle
    assert [p.text for p in forced][:3] == [p.text for p in sharegpt_seed0][:3]
    capped = load_prompts("sharegpt", tokenizer=TOKENIZER, count=20, seed=0, max_input_len=32, max_output_len=64)
    assert all(4 <= p.input_len <= 32 and 4 <= p.output_len <= 64 for p in capped)


# ---- a ShareGPT-shaped file ----


def test_sharegpt_file_takes_first_human_turn_and_the_gpt_reply_after_it(tmp_path: Path) -> None:
    reply = "Power times time gives the energy of a run."
    source = sharegpt_file(
        tmp_path / "share.json",
        [
            conversation(("human", HELLO), ("gpt", reply), ("human", "ignored follow-up question here")),
            conversation(("human", "Only one turn, so it is skipped.")),
            conversation(("gpt", "A greeting first."), ("human", "What is a joule exactly?"), ("gpt", reply)),
            conversation(("human", "Two human turns"), ("human", "and no reply at all.")),
            conversation(("human", "Hi"), ("gpt", reply)),  # prompt of 1 token: under min_input_len
            conversation(("human", "Define a watt for me, please."), ("gpt", "It is one.")),  # reply of 4 tokens
            conversation(("human", "And the plural of watt is?"), ("gpt", "Watts.")),  # reply of 3 tokens
            {"id": "no-conversations"},
        ],
    )
    prompts = load_prompts(source, tokenizer=TOKENIZER, count=3, seed=5)
    by_index = {p.source_index: p for p in prompts}
    assert set(by_index) == {0, 2, 5}
    assert by_index[0].input_ids == tuple(HELLO_IDS)
    # ▁Power ▁times ▁time ▁gives ▁the ▁energy ▁of ▁a ▁run .
    assert by_index[0].output_len == len(TOKENIZER.encode(reply)) == 10
    assert by_index[2].text == "What is a joule exactly?"
    assert by_index[5].output_len == len(TOKENIZER.encode("It is one.")) == 4  # ▁It ▁is ▁one .

    with pytest.raises(ValueError) as shortfall:
        load_prompts(source, tokenizer=TOKENIZER, count=4, seed=5)
    message = str(shortfall.value)
    assert "has 3 usable prompts but count asks for 4" in message
    assert "1 ShareGPT conversations with fewer than 2 turns" in message
    assert "1 ShareGPT conversations without a human turn followed by a gpt turn" in message
    assert "1 ShareGPT records without a 'conversations' list" in message
    assert "1 prompt shorter than min_input_len=4 tokens" in message
    assert "1 output shorter than min_output_len=4 tokens" in message

    with pytest.raises(ValueError, match="has 2 usable prompts.*2 output shorter than min_output_len=5 tokens"):
        load_prompts(source, tokenizer=TOKENIZER, count=3, seed=5, min_output_len=5)


def test_sharegpt_file_cut_short_or_not_an_array_is_refused(tmp_path: Path) -> None:
    whole = json.dumps([conversation(("human", HELLO), ("gpt", "reply text here"))] * 3, indent=2)
    cut = tmp_path / "cut.json"
    cut.write_text(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"not valid JSON at line \d+, column \d+ .*cut short"):
        load_prompts(f"sharegpt:{cut}", tokenizer=TOKENIZER, count=1, seed=0)
    (tmp_path / "obj.json").write_text('{"conversations": []}')
    with pytest.raises(ValueError, match="does not start with a JSON array"):
        load_prompts(f"sharegpt:{tmp_path / 'obj.json'}", tokenizer=TOKENIZER, count=1, seed=0)
    with pytest.raises(ValueError, match="prompt file .*nope.json' does not exist"):
        load_prompts(f"sharegpt:{tmp_path / 'nope.json'}", tokenizer=TOKENIZER, count=1, seed=0)


# ---- user JSONL and JSON files ----


def test_jsonl_prompts_keep_their_output_len_and_are_seeded(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [json.dumps(record) for record in numbered_prompts(20)]
    path.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")
    prompts = load_prompts(str(path), tokenizer=TOKENIZER, count=20, seed=3)
    assert sorted(p.source_index for p in prompts) == list(range(20))
    for prompt in prompts:
        assert prompt.output_len == 10 + prompt.source_index
        assert prompt.text == f"Explain item number {prompt.source_index} of the energy report in detail."
        assert list(prompt.input_ids) == TOKENIZER.encode(prompt.text)
    assert load_prompts(str(path), tokenizer=TOKENIZER, count=20, seed=3) == prompts
    assert [p.source_index for p in load_prompts(str(path), tokenizer=TOKENIZER, count=20, seed=4)] != [
        p.source_index for p in prompts
    ]
    forced = load_prompts(str(path), tokenizer=TOKENIZER, count=5, seed=3, forced_output_len=3)
    assert [p.output_len for p in forced] == [3] * 5
    assert [p.source_index for p in forced] == [p.source_index for p in prompts[:5]]
    capped = load_prompts(str(path), tokenizer=TOKENIZER, count=5, seed=3, max_output_len=14)
    assert sorted(p.source_index for p in capped) == [0, 1, 2, 3, 4]


def test_json_array_prompts_and_output_len_from_forced(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": HELLO}, {"prompt": "Tell me about joules and watts."}]))
    prompts = load_prompts(str(path), tokenizer=TOKENIZER, count=2, seed=0, forced_output_len=128)
    assert {p.text: (p.input_ids, p.output_len) for p in prompts}[HELLO] == (tuple(HELLO_IDS), 128)
    with pytest.raises(ValueError, match=r"record 1 has no 'output_len'; add one .* or pass forced_output_len"):
        load_prompts(str(path), tokenizer=TOKENIZER, count=2, seed=0)


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("bad.jsonl", '{"prompt": "ok", "output_len": 5}\n{"prompt": oops}\n', "line 2 is not valid JSON"),
        ("bad.json", '[{"prompt": "ok",\n "output_len": }]', r"is not valid JSON \(Expecting value at line 2"),
        ("obj.json", '{"prompt": "a whole object"}', "holds a JSON dict, expected an array"),
        ("empty.json", "[]", "is an empty array"),
        ("empty.jsonl", "\n\n", "holds no records"),
        ("list.jsonl", '["prompt"]\n', 'line 1 is a JSON list, expected an object {"prompt": ...}'),
        ("noprompt.jsonl", '{"text": "hello", "output_len": 5}\n', "line 1 has no 'prompt'"),
        ("blank.jsonl", '{"prompt": "   ", "output_len": 5}\n', "line 1 has no 'prompt'"),
        ("zero.jsonl", '{"prompt": "hello there", "output_len": 0}\n', "line 1: output_len must be a positive int"),
        ("neg.json", '[{"prompt": "a b c d", "output_len": 4}, {"prompt": "e f", "output_len": -3}]', "record 2:"),
        ("float.jsonl", '{"prompt": "hello there", "output_len": 2.5}\n', "output_len must be a positive int"),
        ("nan.jsonl", '{"prompt": "hello there", "output_len": NaN}\n', "got nan"),
        ("bool.jsonl", '{"prompt": "hello there", "output_len": true}\n', "got True"),
        ("str.jsonl", '{"prompt": "hello there", "output_len": "5"}\n', "got '5'"),
        ("huge.jsonl", '{"prompt": "hello there", "output_len": 1e400}\n', "got inf"),
        ("prompts.txt", '{"prompt": "hello", "output_len": 5}\n', "neither 'sharegpt' nor a file ending .jsonl"),
    ],
)
def test_bad_user_files_are_refused_with_the_place_and_the_fix(
    tmp_path: Path, name: str, content: str, error: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=error):
        load_prompts(str(path), tokenizer=TOKENIZER, count=1, seed=0)


def test_missing_and_non_utf8_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prompt file .*absent.jsonl' does not exist"):
        load_prompts(str(tmp_path / "absent.jsonl"), tokenizer=TOKENIZER, count=1, seed=0)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "énergie", "output_len": 5}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_prompts(str(latin1), tokenizer=TOKENIZER, count=1, seed=0)


def test_too_few_user_prompts_names_the_filter(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in numbered_prompts(5) + [{"prompt": "Hi", "output_len": 9}]))
    with pytest.raises(ValueError) as shortfall:
        load_prompts(str(path), tokenizer=TOKENIZER, count=6, seed=0, max_output_len=12)
    message = str(shortfall.value)
    assert "has 3 usable prompts but count asks for 6" in message
    assert "2 output longer than max_output_len=12 tokens" in message
    assert "1 prompt shorter than min_input_len=4 tokens" in message
    assert "lower count or widen the length limits" in message


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"count": 0}, "count: expected an int from 1"),
        ({"count": 2.0}, "count: expected an int from 1"),
        ({"seed": "7"}, "seed: expected an int, got '7'"),
        ({"min_input_len": 0}, "min_input_len: expected an int from 1"),
        ({"max_output_len": 10**9}, "max_output_len: expected an int from 1 to 1048576"),
        ({"min_input_len": 50, "max_input_len": 10}, "min_input_len: 50 is above max_input_len 10"),
        ({"min_output_len": 50, "max_output_len": 10}, "min_output_len: 50 is above max_output_len 10"),
        ({"forced_output_len": 0}, "forced_output_len: expected an int from 1"),
        ({"forced_output_len": True}, "forced_output_len: expected an int from 1"),
        ({"source": ""}, "source: expected 'sharegpt'"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, arguments: dict[str, Any], error: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": HELLO, "output_len": 5}))
    call: dict[str, Any] = {"source": str(path), "tokenizer": TOKENIZER, "count": 1, "seed": 0} | arguments
    with pytest.raises(ValueError, match=error):
        load_prompts(**call)


def test_a_hub_dataset_without_the_datasets_library_says_how_to_get_it() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="not installed on this worker; pip install datasets"):
            load_prompts("hf:anon/sharegpt", tokenizer=offline_tokenizer(), count=1, seed=0)
    with pytest.raises(ValueError, match="hf: needs a dataset id"):
        load_prompts("hf:", tokenizer=offline_tokenizer(), count=1, seed=0)
