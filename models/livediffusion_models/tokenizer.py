"""A CLIP tokenizer that needs no network.

Every model here tokenizes with the same CLIP BPE (49408 tokens); only the padding token
differs. Shipping the BPE merges (from OpenAI CLIP via open_clip, see data/NOTICE) lets random
weights, tests and weights folders without tokenizer/ run offline. A real tokenizer/ folder on
disk is still preferred by the loader.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# open_clip (SimpleTokenizer) keeps lines [1, 49152 - 256 - 2 + 1) of the file: line 0 is a
# header, and 256 byte tokens + 256 "</w>" tokens + merges + 2 specials make 49408.
_MERGES_END = 49152 - 256 - 2 + 1


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character map; its order fixes the first 256 ids."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """Return CLIP's vocab (token -> id) and BPE merges ("a b" lines), built from the BPE file."""
    raw = (files("livediffusion_models") / "data" / BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = tuple(lines[1:_MERGES_END])
    byte_chars = list(_bytes_to_unicode().values())
    tokens = [*byte_chars, *(c + "</w>" for c in byte_chars)]
    tokens.extend("".join(merge.split()) for merge in merges)
    tokens.extend((BOS_TOKEN, EOS_TOKEN))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:  # a damaged or different BPE file; fail loudly, not subtly
        raise RuntimeError(f"{BPE_FILE} gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write_tokenizer_files(folder: str | Path, *, pad_token: str) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json (a diffusers tokenizer/ folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def build_offline_tokenizer(*, pad_token: str) -> CLIPTokenizer:
    """Build the CLIP tokenizer from the shipped BPE file, padding with ``pad_token``.

    Goes through files + ``from_pretrained`` (not the constructor) because that is the one
    entry point transformers 4 (slow, file-based) and 5 (tokenizers-based) agree on. The files
    are read into memory, so the temporary folder can go at once.
    """
    from transformers import CLIPTokenizer

    vocab, _ = clip_vocab_and_merges()
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    with tempfile.TemporaryDirectory(prefix="livediffusion-tokenizer-") as tmp:
        write_tokenizer_files(tmp, pad_token=pad_token)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    return tokenizer
