"""A tiny Qwen3 (hidden 128, 4 layers, ~1.0M params) with a character-level ChatML tokenizer.

Built offline from a config (no model hub): `build_tiny_model()` writes `config.json`,
`generation_config.json`, `model.safetensors`, `tokenizer.json` and `tokenizer_config.json` (with a
ChatML chat template) into `<cache>/tiny_qwen3_h{hidden}_l{layers}_s{seed}/` and returns that path;
a later call with the same arguments reuses it. The cache root is `$SRPO_VERL_CACHE`, else
`~/.cache/srpo_verl`. Weights are random (seeded); `python -m srpo_verl.demo.tiny_model` prints
the path, the parameter count and the vocabulary size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

# Tokens 0..3 are special; then "\n" and the 95 printable ASCII characters, one token each.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARACTERS = ["\n"] + [chr(code) for code in range(32, 127)]

# ChatML as Qwen writes it, without a default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Bumped whenever the files written below change, so stale caches are rebuilt.
FORMAT_VERSION = 1


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("SRPO_VERL_CACHE", "~/.cache/srpo_verl"))


def write_dir_atomically(out_dir: str, write) -> str:
    """Fill a directory with `write(staging_dir)` next to `out_dir`, then rename it into place, so
    that no reader or concurrent builder ever sees half of it. An existing `out_dir` (a stale
    cache entry) is replaced. When another process renames its copy in first, ours is dropped:
    every caller builds the same content for the same path. Returns `out_dir`."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}_", dir=parent)
    try:
        os.chmod(staging, 0o755)
        write(staging)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if not os.path.isdir(out_dir):  # no other builder's copy there: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def build_tokenizer():
    """A `PreTrainedTokenizerFast`: one token per character, ChatML specials, pad <|endoftext|>."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character (newlines included) is its own pre-token; Fuse joins them back on decode.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def build_config(vocab_size: int, *, hidden_size: int, num_layers: int, eos_id: int, pad_id: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )


def build_tiny_model(out_dir: str | None = None, *, hidden_size: int = 128, num_layers: int = 4, seed: int = 0) -> str:
    """Write the tiny model and tokenizer to `out_dir` (default: under `cache_root()`); idempotent."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = out_dir or os.path.join(cache_root(), f"tiny_qwen3_h{hidden_size}_l{num_layers}_s{seed}")
    spec = {"format": FORMAT_VERSION, "hidden_size": hidden_size, "num_layers": num_layers, "seed": seed}
    marker = os.path.join(out_dir, "srpo_verl_tiny_model.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                return out_dir

    tokenizer = build_tokenizer()
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = build_config(len(tokenizer), hidden_size=hidden_size, num_layers=num_layers, eos_id=eos_id, pad_id=pad_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with open(os.path.join(staging, "srpo_verl_tiny_model.json"), "w") as f:
            json.dump(spec, f)

    return write_dir_atomically(out_dir, write)


if __name__ == "__main__":
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model()
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    print(f"{path}: {n_params / 1e6:.2f}M params, vocabulary {len(AutoTokenizer.from_pretrained(path))}")
