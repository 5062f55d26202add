"""A transformers Qwen2 folder written as one GGUF file that llama.cpp and ollama serve as selfid does.

The `gguf` package (llama.cpp's gguf-py) writes the format, names the tensors (TensorNameMap) and
quantizes in numpy (F16, BF16, Q8_0, Q5_0/1, Q4_0/1). What it lacks is llama.cpp's model-specific
convert_hf_to_gguf.py (not on PyPI): the hyperparameter keys, the BPE vocabulary and the pre-tokenizer's
name. Those few lines for the Qwen2 architecture (Qwen2, Qwen2.5, Qwen2.5-Coder) are here, written after
that script. The file carries the folder's chat template (for an export, the one whose default system
prompt is the training one) and the model's sampling defaults; tensors stream from the safetensors
files one at a time, to a temporary file renamed when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from selfid.errors import SelfidError
from selfid.model.chat import ChatFormat
from selfid.progress import Progress

TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
DEFAULT_TYPES = "bf16,q8_0"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _types():
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16),
            "q8_0": (q.Q8_0, f.MOSTLY_Q8_0), "q5_1": (q.Q5_1, f.MOSTLY_Q5_1), "q5_0": (q.Q5_0, f.MOSTLY_Q5_0),
            "q4_1": (q.Q4_1, f.MOSTLY_Q4_1), "q4_0": (q.Q4_0, f.MOSTLY_Q4_0)}


def parse_types(text: str) -> list[str]:
    types = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in types if t not in TYPES]
    if bad or not types:
        raise SelfidError(f"unknown GGUF type {', '.join(bad) or '(none)'}: use some of {', '.join(TYPES)}")
    return list(dict.fromkeys(types))


def check_architecture(model_type: str | None) -> None:
    if model_type != "qwen2":
        raise SelfidError(f"--gguf writes Qwen2-architecture models (Qwen2, Qwen2.5) and this one is {model_type!r}: "
                          "export without --gguf and convert the folder with llama.cpp's convert_hf_to_gguf.py")


def pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (its converter hashes a test text; the regex says
    the same for the two this writer knows)."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    splits = [p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if splits == [QWEN2_SPLIT]:
        return "qwen2"
    if [p.get("type") for p in parts] == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    raise SelfidError("this tokenizer's pre-tokenization is neither Qwen2's nor GPT-2's, so selfid cannot name it for "
                      "llama.cpp: convert the exported folder with llama.cpp's convert_hf_to_gguf.py")


def _vocab(tokenizer, vocab_size: int):
    """Tokens and their types in id order, as convert_hf_to_gguf.py's get_vocab_base writes them."""
    import gguf

    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tok = reverse[i]
        if tok in added:
            if i in decoder and not decoder[i].normalized:
                tok = tokenizer.decode(tokenizer.encode(tok, add_special_tokens=False))
            special = i in decoder and decoder[i].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(tok)
    return tokens, types


def _tensors(folder: Path):
    """(name, shape, loader) for every tensor in the folder's safetensors files, in file order."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SelfidError(f"{folder} holds no .safetensors weights to write as GGUF")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                yield key, tuple(f.get_slice(key).get_shape()), (lambda file=file, key=key: _load(file, key))


def _load(file: Path, key: str):
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(key).float().numpy()


def write_gguf(folder: str | Path, path: str | Path, kind: str = "q8_0", name: str | None = None,
               progress: bool = True) -> dict:
    """Write the transformers folder `folder` (config.json, safetensors, tokenizer, chat template) to `path`."""
    import gguf
    import numpy as np
    from transformers import AutoTokenizer

    folder, path = Path(folder), Path(path)
    qtype, ftype = _types()[kind]
    config = json.loads((folder / "config.json").read_text())
    check_architecture(config.get("model_type"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    chat = ChatFormat(tokenizer)
    arch = gguf.MODEL_ARCH.QWEN2
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(arch, n_layers)
    vocab_size = int(config.get("vocab_size") or len(tokenizer.get_vocab()))

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    try:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or folder.name)
        w.add_context_length(int(config["max_position_embeddings"]))
        w.add_embedding_length(int(config["hidden_size"]))
        w.add_feed_forward_length(int(config["intermediate_size"]))
        w.add_block_count(n_layers)
        w.add_head_count(int(config["num_attention_heads"]))
        w.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
        w.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta")
                                   or config.get("rope_theta") or 10000.0))
        w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
        scaling = config.get("rope_scaling") or {}
        if scaling.get("type", scaling.get("rope_type")) == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(scaling["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        w.add_file_type(ftype)
        if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = _vocab(tokenizer, vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_tokenizer(tokenizer))
        w.add_token_list(tokens)
        w.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
        special.chat_template = chat.template  # the template selfid renders with (an export's carries its default)
        special.add_to_gguf(w, quiet=True)
        w.add_add_bos_token(bool(tokenizer.bos_token_id is not None and tokenizer("a").input_ids[:1]
                                 == [tokenizer.bos_token_id]))
        _sampling_defaults(w, folder)
        w.add_string("selfid.template_hash", chat.template_hash)
        if chat.default_system is not None:
            w.add_string("selfid.default_system", chat.default_system)

        plan = []
        tied = bool(config.get("tie_word_embeddings"))
        for key, shape, load in _tensors(folder):
            if key == "lm_head.weight" and tied:
                continue  # llama.cpp uses token_embd for the output when output.weight is absent
            new = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise SelfidError(f"{folder}: tensor {key} has no GGUF name for qwen2; convert with llama.cpp's "
                                  "convert_hf_to_gguf.py instead")
            t = qtype
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if len(shape) == 1:
                t = gguf.GGMLQuantizationType.F32  # norms and biases stay F32, as llama.cpp's converter keeps them
            elif shape[-1] % block:
                t = gguf.GGMLQuantizationType.F16  # rows that do not fill whole blocks, as llama.cpp falls back
            nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, t)))
            w.add_tensor_info(new, shape, np.dtype(np.float32), nbytes, raw_dtype=t)
            plan.append((new, t, load))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()

        with Progress(*Progress.get_default_columns(), disable=not progress, transient=True, unit="tensors") as bar:
            task = bar.add_task(f"GGUF {kind}", total=len(plan))
            for new, t, load in plan:
                w.write_tensor_data(gguf.quants.quantize(load(), t))
                bar.advance(task)
        w.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            w.close()
        finally:
            tmp.unlink(missing_ok=True)
        raise
    return {"path": str(path), "type": kind, "bytes": path.stat().st_size, "tensors": len(plan),
            "template_hash": chat.template_hash, "default_system": chat.default_system,
            "chatml": "<|im_start|>" in chat.template}


def _sampling_defaults(w, folder: Path) -> None:
    """The model's published sampling defaults, under the general.sampling keys llama.cpp reads."""
    gc_path = folder / "generation_config.json"
    if not gc_path.is_file():
        return
    gc = json.loads(gc_path.read_text())
    if not gc.get("do_sample"):
        return
    for key, add in (("temperature", w.add_sampling_temp), ("top_p", w.add_sampling_top_p),
                     ("top_k", w.add_sampling_top_k), ("repetition_penalty", w.add_sampling_penalty_repeat)):
        if gc.get(key) is not None:
            add(gc[key])


def modelfile(gguf_name: str, default_system: str | None, folder: Path) -> str:
    """An ollama Modelfile for a ChatML-template GGUF: ollama does not run the GGUF's jinja template, so the
    default system prompt (for an export, the training one) goes in SYSTEM and the sampling defaults in PARAMETER."""
    # ollama puts SYSTEM in front of a conversation that has no system message, then runs TEMPLATE (ChatML)
    lines = [f"FROM ./{gguf_name}", "",
             'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
             '<|im_start|>assistant\n"""', ""]
    if default_system is not None:
        lines += [f'SYSTEM """{default_system}"""', ""]
    gc_path = folder / "generation_config.json"
    gc = json.loads(gc_path.read_text()) if gc_path.is_file() else {}
    if gc.get("do_sample"):
        for key, param in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                           ("repetition_penalty", "repeat_penalty")):
            if gc.get(key) is not None:
                lines.append(f"PARAMETER {param} {gc[key]}")
    lines += ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|endoftext|>"']
    return "\n".join(lines) + "\n"
