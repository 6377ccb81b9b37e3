"""The prompt guard in the contract's encoder (``PromptEncoder.build``): the one place where ``tpo ask``, ``tpo run``,
``tpo stream`` and ``Pipeline.ask`` refuse a prompt. Invalid UTF-8, an empty prompt, control tokens typed by the user
and a prompt longer than the KV capacity are refused with a ValueError naming the problem and the fix; ``<track_box>``
is a box slot, accepted only with as many boxes. No export needed: the shipped tokenizer and the release template."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from runtime.contract.prompt import PromptEncoder, release_template

TOKENIZER = Path(__file__).resolve().parents[1] / "tpo_core" / "assets" / "default" / "tokenizer.json"
CONTROL = ("<s>", "</s>", "<unk>", "<box_begin>", "<time_begin>", "<temp>", "<boxes>", "<track_begin>", "<tracking>")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER))


@pytest.fixture(scope="module")
def enc(tok) -> PromptEncoder:
    return PromptEncoder(tok, release_template("", 16), bos_id=1, eos_id=2, max_context=256)


def _added(tok) -> set[int]:
    return set(tok.get_added_tokens_decoder())


def test_invalid_utf8_is_refused_naming_the_byte(enc):
    bad = os.fsdecode(b"Where is the \xff\xfe red circle?")  # what Python makes of raw bytes in argv
    with pytest.raises(ValueError, match=r"not valid UTF-8.*0xff.*character 13"):
        enc.build(bad)
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800"):
        enc.build("a \ud800 b")


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_refused(enc, prompt):
    with pytest.raises(ValueError, match="the prompt is empty"):
        enc.build(prompt)
    with pytest.raises(ValueError, match="must be a string"):
        enc.build(None)


@pytest.mark.parametrize("prompt, token", [("<tracking><temp>", "<tracking>"), ("Where is it?</s>", "</s>"),
                                           ("<s> hi", "<s>"), ("find <box_begin>", "<box_begin>"),
                                           ("x <boxes> y", "<boxes>"), ("<track_begin>", "<track_begin>"),
                                           ("what <unk>", "<unk>")])
def test_control_tokens_typed_by_the_user_are_refused(enc, prompt, token):
    with pytest.raises(ValueError, match=rf"control token '{token}'.*refused.*reword"):
        enc.build(prompt)


def test_text_that_only_looks_like_control_tokens_stays_text(enc, tok):
    x = enc.build("x")
    base = Counter(i for i in x.pre + x.post if i in _added(tok))
    for q in ("< s >", "<box>", "[/INST] <Video>", "<<track>>", "s>", "</ s>", "<boxes", "temp>"):
        ids = enc.build(q)
        assert Counter(i for i in ids.pre + ids.post if i in _added(tok)) == base, q


def test_track_box_is_a_box_slot(enc, tok):
    tb = tok.token_to_id("<track_box>")
    with pytest.raises(ValueError, match=r"'<track_box>'.*no box was given.*--box x0,y0,x1,y1"):
        enc.build("Track <track_box> please")
    ids = enc.build("Track this object.", num_boxes=1)  # no slot in the text: appended after the question
    assert ids.post.count(tb) == 1 and ids.post.index(tb) > len(ids.post) - 8
    two = enc.build("Is <track_box> left of <track_box>?", num_boxes=2)
    assert two.post.count(tb) == 2
    with pytest.raises(ValueError, match=r"2 '<track_box>' slots but 1 box"):
        enc.build("Is <track_box> left of <track_box>?", num_boxes=1)
    with pytest.raises(ValueError, match="num_boxes"):
        enc.build("Track it.", num_boxes=-1)


def test_prompt_longer_than_the_kv_capacity(enc):
    with pytest.raises(ValueError, match=r"the prompt is \d+ tokens .*KV cache holds 256.*shorten the question"):
        enc.build("why " * 400)
    with pytest.raises(ValueError, match=r"max_new_tokens=1000.*lower max_new_tokens to <= \d+"):
        enc.build("What is it?", max_new_tokens=1000)
    with pytest.raises(ValueError, match=r"20000 characters.*KV cache holds 256"):  # refused before tokenizing
        enc.build("w" * 20000)
    assert enc.build("What is it?", max_new_tokens=8).prompt_len < 256


def test_training_answers_keep_their_task_tokens(enc, tok):
    ids = enc.build("Where is the red circle?", answer="It is here <box_begin><boxes>.")
    assert tok.token_to_id("<box_begin>") in ids.answer and ids.answer[-1] == 2


_pieces = st.one_of(st.text(max_size=12), st.sampled_from(CONTROL + ("<track_box>",)),
                    st.integers(0xD800, 0xDFFF).map(chr), st.sampled_from(["[INST]", "[/INST]", " ", "\x00", "<"]))


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_pieces, max_size=12), boxes=st.integers(0, 2), repeat=st.sampled_from([1, 1, 1, 40]))
def test_any_text_gives_ids_without_control_tokens_or_a_clear_error(enc, tok, parts, boxes, repeat):
    """Property: arbitrary unicode (surrogates, control tokens, NULs, long repeats) either encodes to ids whose
    special / task tokens are exactly the template's (plus one <track_box> per box), or is refused with a
    ValueError that says what is wrong -- never another exception."""
    q = "".join(parts) * repeat
    try:
        ids = enc.build(q, num_boxes=boxes)
    except ValueError as e:
        msg = str(e)
        assert any(k in msg for k in ("UTF-8", "surrogate", "empty", "control token", "<track_box>", "KV cache")), msg
        return
    got = Counter(i for i in ids.pre + ids.post if i in _added(tok))
    want = Counter(i for i in enc.build("x").pre + enc.build("x").post if i in _added(tok))
    want[tok.token_to_id("<track_box>")] += boxes
    assert got == +want
