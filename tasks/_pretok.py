"""Text corpora pre-tokenised once into uint16 memmaps, as llama2.c's ``tinystories.py pretokenize`` does.

Corpus layouts read from a local path:

- TinyStories JSON shards (``TinyStories_all_data/data00.json ... data49.json``, read as ``data*.json``):
  each a JSON list of objects with a ``story`` field. As in llama2.c, the first shard (sorted by name) is
  the validation split and the others are the training split.
- A ``datasets`` folder written by ``DatasetDict.save_to_disk`` (e.g. ``roneneldan/TinyStories``) with
  ``train`` and ``validation`` splits and a ``text`` column.

A ``source.json`` beside the shards (written by ``scripts/download_data.py`` for a substitute corpus) is
copied into the data source, so a substitute stays labelled as one in every run record.

Tokenizer: a Hugging Face ``tokenizer.json`` or a SentencePiece ``tokenizer.model`` (Llama 2's, as llama2.c
reads it) from a local path, or a byte-level BPE trained with ``tokenizers`` on the training split (llama2.c's
custom-vocabulary route, ``train_vocab.py``). A SentencePiece model is converted to a ``tokenizers`` BPE by
transformers' ``SpmConverter``, which encodes as ``SentencePieceProcessor.encode`` does. Every story
starts with the BOS token ``<s>`` (llama2.c: ``enc.encode(text, bos=True, eos=False)``). The token files
and the trained tokenizer are cached under ``cache_dir/<key>``, the key being a hash of the corpus files'
names, sizes and mtimes and of the tokenizer, so a second run reads the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tasks.base import DatasetMissingError

BOS = "<s>"
#: llama2.c's ``train_vocab.py`` trains its tokenizer on the first 10 shards; so do we
TOKENIZER_TRAIN_SHARDS = 10
SPLITS = ("train", "val")


@dataclass
class Pretokenised:
    """The two splits' token streams (read-only memmaps) and where they came from."""

    tokens: dict[str, np.ndarray]
    tokenizer: Tokenizer
    source: dict[str, Any] = field(default_factory=dict)


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def corpus_files(data_dir: Path, fetch: str) -> tuple[str, list[Path]]:
    """(layout, files) of the corpus at ``data_dir``: ``json_shards`` or ``hf_disk``."""
    if not data_dir.is_dir():
        raise DatasetMissingError("text corpus", str(data_dir), fetch)
    shards = sorted(data_dir.glob("data*.json"))
    if (data_dir / "dataset_dict.json").is_file():
        return "hf_disk", sorted(p for p in data_dir.rglob("*") if p.is_file())
    if len(shards) >= 2:
        return "json_shards", shards
    raise DatasetMissingError(
        "text corpus (>= 2 TinyStories data*.json shards or a datasets save_to_disk folder)",
        str(data_dir),
        fetch,
    )


def _shard_texts(path: Path) -> list[str]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a TinyStories JSON shard ({err})") from err
    if not isinstance(rows, list) or any(not isinstance(r, dict) or "story" not in r for r in rows):
        raise ValueError(f"{path}: expected a JSON list of objects with a 'story' field")
    return [str(r["story"]).strip() for r in rows]


def split_texts(layout: str, data_dir: Path, files: list[Path], split: str) -> Iterator[list[str]]:
    """The texts of ``split`` (``train``/``val``), in pieces of at most one shard."""
    if layout == "json_shards":
        for path in files[1:] if split == "train" else files[:1]:
            yield _shard_texts(path)
        return
    import datasets

    dd = datasets.load_from_disk(str(data_dir))
    name = "train" if split == "train" else "validation"
    if name not in dd or "text" not in dd[name].column_names:
        raise ValueError(f"{data_dir}: expected splits 'train' and 'validation' with a 'text' column")
    for start in range(0, len(dd[name]), 10_000):
        yield [str(t).strip() for t in dd[name][start : start + 10_000]["text"]]


def train_bpe(texts: Iterator[list[str]], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` tokens (``<s>`` included) learned from ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for piece in texts for t in piece), trainer=trainer)
    return tok


def load_tokenizer(path: Path) -> tuple[Tokenizer, Path]:
    """(tokenizer, file read): a ``tokenizer.json`` or SentencePiece ``*.model``, or a folder with one."""
    file = path
    if path.is_dir():
        file = next((path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).is_file()), path)
    if not file.is_file():
        raise DatasetMissingError(
            "tokenizer (a Hugging Face tokenizer.json or a SentencePiece tokenizer.model)",
            str(file),
            "set task.tokenizer=null to train a BPE",
        )
    if file.suffix == ".model":
        return sentencepiece_tokenizer(file), file
    return Tokenizer.from_file(str(file)), file


def sentencepiece_tokenizer(file: Path) -> Tokenizer:
    """The SentencePiece model ``file`` (e.g. Llama 2's) as a ``tokenizers`` BPE giving the same ids."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, SpmConverter

    try:
        proto = SentencePieceExtractor(str(file)).proto
    except Exception as err:  # sentencepiece raises RuntimeError/DecodeError on a file that is not a model
        raise ValueError(f"{file}: not a SentencePiece model ({err})") from err
    if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
        raise ValueError(f"{file}: a SentencePiece BPE model is needed (Llama's); this one is not BPE")
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    # its default (legacy) prefix scheme puts the dummy "▁" before the text, as SentencePieceProcessor.encode
    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)


def _encode(tok: Tokenizer, texts: Iterator[list[str]], bos: int) -> np.ndarray:
    pieces = []
    for chunk in texts:
        for enc in tok.encode_batch(chunk, add_special_tokens=False):
            pieces.append(np.asarray([bos, *enc.ids], dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def pretokenise(
    data_dir: str | Path,
    tokenizer: str | Path | None,
    vocab_size: int,
    cache_dir: str | Path,
    fetch: str,
) -> Pretokenised:
    """Tokenise the corpus at ``data_dir`` once (cached) and map both splits read-only."""
    data_dir = Path(data_dir)
    layout, files = corpus_files(data_dir, fetch)
    if tokenizer is not None:
        tok, file = load_tokenizer(Path(tokenizer))
        tok_id = hashlib.sha256(tok.to_str().encode()).hexdigest()
        kind = "sentencepiece" if file.suffix == ".model" else "file"
        tok_kind = {"kind": kind, "path": str(file), "sha256": _file_record(file)["sha256"]}
    else:
        tok, tok_id = None, f"bpe{vocab_size}"
        tok_kind = {"kind": "trained_bpe", "vocab_size": vocab_size}
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(data_dir.resolve()), stamp, tok_id]).encode()).hexdigest()[:16]
    out = Path(cache_dir) / key
    meta_path = out / "meta.json"
    if tok is not None:
        _check_vocab(tok, vocab_size, str(tokenizer))
    if not meta_path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        if tok is None:
            n_train = TOKENIZER_TRAIN_SHARDS if layout == "json_shards" else None
            texts = split_texts(layout, data_dir, files, "train")
            tok = train_bpe((p for i, p in enumerate(texts) if n_train is None or i < n_train), vocab_size)
            _check_vocab(tok, vocab_size, "the BPE trained on the corpus")
            tok.save(str(out / "tokenizer.json"))
        bos = _bos_id(tok)
        counts = {}
        for split in SPLITS:
            arr = _encode(tok, split_texts(layout, data_dir, files, split), bos)
            tmp = out / f"{split}.bin.part"
            arr.tofile(tmp)
            os.replace(tmp, out / f"{split}.bin")
            counts[split] = int(arr.size)
        meta = {
            "layout": layout,
            "files": [_file_record(p.resolve()) for p in files],
            "tokens": counts,
            "tokenizer": tok_kind,
        }
        tmp = out / "meta.json.part"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)
    meta = json.loads(meta_path.read_text())
    if tok is None:
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokens = {s: np.memmap(out / f"{s}.bin", dtype=np.uint16, mode="r") for s in SPLITS if meta["tokens"][s]}
    source: dict[str, Any] = {
        "kind": f"pretokenised {layout}",
        "data_dir": str(data_dir),
        "files": meta["files"],
        "tokens": meta["tokens"],
        "tokenizer": meta["tokenizer"],
        "cache": str(out),
    }
    label = data_dir / "source.json"
    if label.is_file():
        source["corpus"] = json.loads(label.read_text())
    return Pretokenised(tokens=tokens, tokenizer=tok, source=source)


def _check_vocab(tok: Tokenizer, vocab_size: int, what: str) -> None:
    have = tok.get_vocab_size()
    if have != vocab_size:
        raise ValueError(
            f"tokenizer vocabulary ({have} tokens, {what}) does not match the model's vocab_size={vocab_size}"
        )
    if vocab_size > 1 << 16:
        raise ValueError(f"vocab_size={vocab_size} does not fit the uint16 token files (max 65536)")


def _bos_id(tok: Tokenizer) -> int:
    bos = tok.token_to_id(BOS)
    if bos is None:
        raise ValueError(f"the tokenizer has no BOS token {BOS!r}")
    return bos


def write_story_shards(folder: Path, shards: int = 2, stories_per_shard: int = 40, seed: int = 0) -> Path:
    """Tiny TinyStories-style JSON shards (``data00.json``...; the fields of the real files) for tests."""
    rng = np.random.default_rng(seed)
    names = ["Lily", "Tom", "Ben", "Mia", "Sue", "Max"]
    things = ["ball", "cat", "tree", "boat", "cake", "kite", "dog", "box"]
    verbs = ["saw", "found", "liked", "wanted", "lost", "packed", "painted", "hugged"]
    moods = ["happy", "sad", "big", "red", "little", "shiny", "funny", "kind"]
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        rows = []
        for _ in range(stories_per_shard):
            sentences = [
                f"{rng.choice(names)} {rng.choice(verbs)} a {rng.choice(moods)} {rng.choice(things)}."
                for _ in range(int(rng.integers(4, 9)))
            ]
            story = "Once upon a time, " + " ".join(sentences) + " The end."
            rows.append({"story": story, "instruction": {}, "summary": "", "source": "GPT-4"})
        (folder / f"data{shard:02d}.json").write_text(json.dumps(rows))
    return folder
