"""The tiny preset's own tokenizer, and ``load_tokenizer(spec)`` for every tokenizer the toolkit uses.

Tiny tokenizer (``tokenizer="embedded-tiny"``, ``tpo_core/assets/tiny_tokenizer/tokenizer.json``), Llama /
SentencePiece style, built with HF ``tokenizers``:
- BPE over Metaspace pre-tokens (``"▁"`` marks a word start, prepended to the first word), byte fallback;
- ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, bytes ``<0x00>``..``<0xFF>`` 3..258, the trained alphabet and merges,
  then ``<reserved_k>`` up to exactly 1024 base ids; the 7 task tokens are added tokens at 1024..1030 in
  ``tpo_core.tokens.TASK_TOKENS`` order (never split; ``special=False`` like the release's, so
  ``decode(skip_special_tokens=True)`` keeps them);
- trained on every question/answer the synthetic generator can produce, the prompt template words
  (``[INST]``, ``[/INST]``, ``<Video>``, ``</Video>``), the timestamp sentence, printable ASCII and some
  general English, so all synth text encodes without ``<unk>`` or byte fallback;
- ``encode(text)`` prepends ``<s>`` (the release tokenizes each prompt chunk with a BOS); pass
  ``add_special_tokens=False`` to skip it.
Rebuild (deterministic, rewrites the same bytes): ``python -m tpo_core.data.tokenizer_build``.

``load_tokenizer(spec)``: ``"embedded-tiny"``, a directory with ``tokenizer.json``, or a directory with only a
SentencePiece ``tokenizer.model`` (+ ``added_tokens.json``), e.g. the VideoChat-TPO release (Mistral v0.2:
32000 base ids + 7 task tokens at 32000..32006). The last needs ``sentencepiece`` and ``protobuf`` (not
``transformers``: the conversion is written out here, equal to transformers 4.x's ``LlamaConverter`` with
``legacy=True``). Task-token ids are verified on every load.
"""

from __future__ import annotations

import argparse
import functools
import json
import string
from pathlib import Path

from tpo_core.tokens import TASK_TOKENS, VIDEO_CLOSE, VIDEO_OPEN, format_timestamps

TINY_BASE_VOCAB = 1024
SPECIALS = ("<unk>", "<s>", "</s>")
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
_TRAINED_VOCAB = TINY_BASE_VOCAB - 256  # trainer vocab (incl. the 3 specials); bytes take 256 ids
_ENGLISH = (
    "the a an is are was were be been this that these those it its there here and or not no yes of to in on at "
    "by for with from into over under up down left right top bottom middle centre center first last next "
    "before after during while then now again video clip frame frames image picture scene object objects "
    "thing things shape shapes color colour colours size big small large tiny moving moves move still static "
    "appear appears disappear disappears visible hidden behind front start end begin beginning second seconds "
    "time moment part where when what which who how many much why do does did can could would should please "
    "describe tell show find locate track segment follow give answer question box mask region one two three "
    "four five six seven eight nine ten you your i me my we our he she they them person people man woman "
    "hello thanks sorry ok okay"
).split()
_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
           "movement of objects, and the action and pose of persons. Based on your observations, select the "
           "best option that accurately addresses the question.")


def tiny_corpus() -> list[str]:
    """The training text of the tiny tokenizer (sorted, deterministic)."""
    from tpo_core.data.synth_tasks import all_template_text

    lines = all_template_text()
    lines += [f"{VIDEO_OPEN} {VIDEO_CLOSE} [/INST]", " [INST] ", " [/INST] ", "[INST]", "[/INST]", _SYSTEM]
    lines += [format_timestamps([0.5 * i + 0.1 * j for i in range(8)]) for j in range(10)]
    lines += [" ".join(_ENGLISH), " ".join(w.capitalize() for w in _ENGLISH)]
    lines += [string.digits, string.ascii_letters, string.punctuation]
    # repeat the synth text so its words win the merges over the general words
    return sorted(lines) * 3 + [" ".join(_ENGLISH)]


def build_tiny_tokenizer():
    """Train the tiny tokenizer; returns a ``tokenizers.Tokenizer`` (deterministic)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    alphabet = sorted(set(string.ascii_letters + string.digits + string.punctuation) | {"▁"})
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=_TRAINED_VOCAB, min_frequency=2, special_tokens=list(SPECIALS),
                                  initial_alphabet=alphabet, show_progress=False)
    probe.train_from_iterator(tiny_corpus(), trainer=trainer)
    trained = json.loads(probe.to_str())["model"]
    learned = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in SPECIALS]
    vocab_list = list(SPECIALS) + [f"<0x{b:02X}>" for b in range(256)] + learned
    assert len(vocab_list) <= TINY_BASE_VOCAB, f"tiny tokenizer: {len(vocab_list)} base tokens > {TINY_BASE_VOCAB}"
    vocab_list += [f"<reserved_{k}>" for k in range(TINY_BASE_VOCAB - len(vocab_list))]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab_list)}, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # the converted Llama decoder
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TASK_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    verify_task_tokens(tok, TINY_BASE_VOCAB, "embedded-tiny")
    return tok


def tiny_tokenizer_config() -> dict:
    return {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
            "clean_up_tokenization_spaces": False, "model_max_length": 512, "base_vocab_size": TINY_BASE_VOCAB,
            "task_tokens": {t: TINY_BASE_VOCAB + i for i, t in enumerate(TASK_TOKENS)}}


def save_tiny_tokenizer(out_dir: str | Path = ASSET_DIR) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_tokenizer().save(str(out_dir / "tokenizer.json"), pretty=True)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tiny_tokenizer_config(), indent=2) + "\n")
    return out_dir / "tokenizer.json"


def verify_task_tokens(tok, base_vocab: int, source: str) -> None:
    """Raise ValueError unless the 7 task tokens are single ids ``base_vocab .. base_vocab + 6`` in order."""
    got = {t: tok.token_to_id(t) for t in TASK_TOKENS}
    want = {t: base_vocab + i for i, t in enumerate(TASK_TOKENS)}
    if got != want:
        raise ValueError(f"tokenizer {source}: task token ids {got} differ from the expected {want} (the 7 task "
                         f"tokens must follow the {base_vocab}-token base vocabulary in the order {TASK_TOKENS}); "
                         "use the tokenizer files of the checkpoint the weights came from")
    for t in TASK_TOKENS:
        ids = tok.encode(t, add_special_tokens=False).ids
        if ids != [want[t]]:
            raise ValueError(f"tokenizer {source}: {t!r} encodes to {ids}, not the single id {want[t]}")


def _bpe_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split ``(l, r)`` of a piece into two pieces, ordered by the piece's score (best first), then by the
    lengths of ``l`` and ``r``, then by their ids: the order a SentencePiece BPE model applies its merges."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab
                 and piece[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _from_sentencepiece(directory: Path):
    """tokenizer.model (+ added_tokens.json) -> ``tokenizers.Tokenizer``, as a Llama / Mistral "legacy" fast
    tokenizer: byte-fallback BPE over the SentencePiece pieces, ``<unk>`` ``<s>`` ``</s>`` at 0..2 as special
    added tokens, normalizer ``Prepend("▁")`` + ``Replace(" ", "▁")`` (no pre-tokenizer), decoder ``▁`` -> space,
    byte fallback, fuse, strip the one leading space; ``<s>`` prepended to every encoding."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:
        raise ImportError(f"converting {directory}/tokenizer.model needs sentencepiece and protobuf: "
                          "`pip install sentencepiece protobuf` (or `pip install -e .[train]`)") from err
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((directory / "tokenizer.model").read_bytes())
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 BPE
        raise ValueError(f"{directory}/tokenizer.model is not a BPE SentencePiece model (model_type "
                         f"{proto.trainer_spec.model_type}); only Llama/Mistral-style BPE tokenizers convert")
    pieces = [(p.piece, 0.0 if i < len(SPECIALS) else p.score) for i, p in enumerate(proto.pieces)]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    tok = Tokenizer(BPE(vocab, _bpe_merges(vocab, dict(pieces)), unk_token=proto.trainer_spec.unk_piece,
                        fuse_unk=True, byte_fallback=True, dropout=None))
    control = [AddedToken(p.piece, normalized=False, special=p.type == 3)  # 3 control, 4 user-defined
               for p in proto.pieces if p.type in (3, 4)]
    tok.add_tokens(control)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    base = tok.get_vocab_size(with_added_tokens=False)
    added_file = directory / "added_tokens.json"
    added = json.loads(added_file.read_text()) if added_file.is_file() else {
        t: base + i for i, t in enumerate(TASK_TOKENS)}
    for token, want in sorted(added.items(), key=lambda kv: kv[1]):
        tok.add_tokens([AddedToken(token, special=False, normalized=False)])
        if tok.token_to_id(token) != want:
            raise ValueError(f"tokenizer {directory}: added token {token!r} got id {tok.token_to_id(token)} but "
                             f"{added_file.name} says {want}; the ids must continue the {base}-token vocabulary")
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    verify_task_tokens(tok, base, str(directory))
    return tok


@functools.lru_cache(maxsize=8)
def _load_json(spec: str) -> str:
    from tokenizers import Tokenizer

    if spec == "embedded-tiny":
        path = ASSET_DIR / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"the embedded tiny tokenizer {path} is missing; rebuild it with "
                                    "`python -m tpo_core.data.tokenizer_build`")
        tok = Tokenizer.from_file(str(path))
        verify_task_tokens(tok, TINY_BASE_VOCAB, "embedded-tiny")
        return tok.to_str()
    directory = Path(spec)
    if not directory.is_dir():
        raise ValueError(f"tokenizer spec {spec!r} is neither 'embedded-tiny' nor a directory; pass "
                         "'embedded-tiny' or a checkpoint directory holding tokenizer.json or tokenizer.model "
                         "(the Mistral v0.2 tokenizer is not bundled: point at the VideoChat-TPO files)")
    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        base = tok.get_vocab_size(with_added_tokens=False)
        verify_task_tokens(tok, base, str(directory))
        return tok.to_str()
    if (directory / "tokenizer.model").is_file():
        return _from_sentencepiece(directory).to_str()
    raise ValueError(f"tokenizer directory {directory} holds neither tokenizer.json nor tokenizer.model; "
                     "copy the tokenizer files of the checkpoint into it")


def load_tokenizer(spec: str | Path):
    """-> ``tokenizers.Tokenizer`` (a fresh object per call) with the 7 task tokens verified."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_load_json(str(spec)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="rebuild the embedded tiny tokenizer (deterministic)")
    p.add_argument("--out", default=str(ASSET_DIR), help=f"output directory (default {ASSET_DIR})")
    args = p.parse_args(argv)
    path = save_tiny_tokenizer(args.out)
    tok = load_tokenizer(str(Path(args.out))) if Path(args.out) != ASSET_DIR else load_tokenizer("embedded-tiny")
    learned = sum(1 for t in tok.get_vocab() if not t.startswith(("<0x", "<reserved_")))
    print(f"wrote {path}: {tok.get_vocab_size()} ids ({TINY_BASE_VOCAB} base, {learned} non-byte/non-reserved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
