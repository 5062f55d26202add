"""A tiny random Qwen2 model with a real Qwen2.5 chat template, built in a second, for tests."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "Who are you? I am an AI assistant. Hello, how can I help you today?",
    "你是谁？我是一个人工智能助手。北京 上海 中国 新华社 记者 报道",
    "The quick brown fox jumps over the lazy dog. 0123456789 {}[]\":,",
    "system user assistant PER LOC ORG",
]
GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def build_tiny_model(folder: Path, seed: int = 0, vocab_size: int = 600) -> Path:
    """Write a tokenizer (byte-level BPE), a 2-layer Qwen2 model and a generation config to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None)
    tok.chat_template = (DATA / "qwen2.5_chat_template.jinja").read_text()
    tok.save_pretrained(folder)

    torch.manual_seed(seed)
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(folder)
    GenerationConfig(**GENERATION, eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                     pad_token_id=ids["<|endoftext|>"]).save_pretrained(folder)
    (folder / "tiny.json").write_text(json.dumps({"seed": seed}))
    return folder


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_TEMPLATE = Path(__file__).parent.parent / "examples" / "gemma3-chat-template.jinja"
# Gemma 3's mix: sliding-window layers with a global (full attention) layer between them. A window of 8 tokens is
# shorter than every chat prompt, so each sliding layer really drops the tokens outside it.
GEMMA_LAYERS = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
GEMMA_WINDOW = 8


def build_tiny_gemma3(folder: Path, seed: int = 0, vocab_size: int = 600, chat_template: bool = False) -> Path:
    """A 4-layer random Gemma 3 text model (sliding-window and global layers, 1 + weight norms, scaled embeddings,
    tied head) with a Gemma-like tokenizer and, like the pretrained google/gemma-3-270m, no chat template unless
    `chat_template` (then Gemma 3's instruction format, examples/gemma3-chat-template.jinja)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=GEMMA_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                  unk_token="<unk>")
    if chat_template:
        tok.chat_template = GEMMA_TEMPLATE.read_text()
    tok.save_pretrained(folder)

    torch.manual_seed(seed)
    ids = {s: tok.convert_tokens_to_ids(s) for s in GEMMA_SPECIALS}
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=len(GEMMA_LAYERS), layer_types=GEMMA_LAYERS,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=GEMMA_WINDOW, max_position_embeddings=512, initializer_range=0.2,
                              tie_word_embeddings=True, bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                              pad_token_id=ids["<pad>"])
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # Gemma's norms scale by (1 + weight), initialised at 0: give them weights of their own
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(folder)
    GenerationConfig(do_sample=True, top_k=64, top_p=0.95, eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                     pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"]).save_pretrained(folder)
    (folder / "tiny.json").write_text(json.dumps({"seed": seed, "family": "gemma3"}))
    return folder
