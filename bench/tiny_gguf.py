"""A tiny llama-architecture GGUF model with random weights (about 0.5 MB), for running a
real llama.cpp server on this machine without downloading a model.

Its tokenizer has the 256 byte tokens (every text tokenizes, byte by byte), the words
the bench sends, and the usual control tokens; what it writes is random. Used by
bench/bench_llama_server.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np


def write_tiny_model(
    path: Path, *, context: int = 2048, seed: int = 7, whole_words: bool = True
) -> None:
    """`whole_words=False`: text is tokenized byte by byte, about four times as many
    tokens as the bot counts (a server whose tokenizer disagrees with the bot's)."""
    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_head, n_layer = 64, 128, 4, 2
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    # Whole words for the text bench_llama_server sends, so the server counts about
    # as many tokens as the bot's tokenizer does (byte by byte it would count 4x more).
    # llama.cpp's tokenizer builds a word by merging neighbours, so every prefix of a
    # word is a token too.
    whole = "please summarise this long paragraph Turn the a and to of is it you I that"
    if not whole_words:
        whole = ""
    words = sorted(
        {"▁" + word[:end] for word in whole.split() for end in range(1, len(word) + 1)}
        | {"▁", ":", *(str(digit) for digit in range(10))}
    )
    tokens += words
    types = (
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.BYTE] * 256
        + [gguf.TokenType.NORMAL] * len(words)
    )
    scores = [0.0] * 3 + [0.0] * 256 + [float(len(word)) for word in words]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("botservice tiny random")
    w.add_context_length(context)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    )

    def t(name: str, *shape: int, scale: float = 0.1) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    t("token_embd.weight", vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out = rng.standard_normal((vocab, n_embd)).astype(np.float32) * 0.1
    w.add_tensor("output.weight", out)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t(f"blk.{i}.{name}.weight", n_embd, n_embd)
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    write_tiny_model(Path(sys.argv[1]))
