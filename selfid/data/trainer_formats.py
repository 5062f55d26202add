"""The identity replay in other trainers' dataset formats: LLaMA-Factory, ms-swift, TRL and OpenAI fine-tuning.

Input: SFT conversations (an optional system message, then user/assistant turns ending with the assistant's reply)
and preference pairs ({"system", "messages": the turns up to the question, "chosen", "rejected"}). Output: the files
each trainer loads as they are, {relative path: text}. Where each schema comes from:

- LLaMA-Factory 0.9.5 (`lf-sharegpt`, `lf-alpaca`): data/README.md of its source distribution (the alpaca and
  sharegpt formats, their preference forms, the `dataset_info.json` description with `"ranking": true`) and
  src/llamafactory/data/converter.py (AlpacaDatasetConverter, SharegptDatasetConverter): JSON arrays, the system
  prompt in a `system` column, alpaca's earlier turns in `history`, sharegpt's `from`/`value` turns with human at odd
  and gpt at even positions, a preference example's prompt ending on the user's turn.
  LLaMA-Factory cannot send an empty system prompt: its template encodes `system or self.default_system`
  (src/llamafactory/data/template.py), so an empty one becomes the template's default. Conversations under the empty
  system prompt are therefore left out of its files (they would repeat the template's own), and "no system message"
  is written as `"system": ""`, which LLaMA-Factory fills with its template's default, as the chat template would.
- ms-swift 4.6 (`swift`): its documentation, Customization/Custom-dataset.md ("messages" required, "rejected_response"
  for DPO and other RLHF training) and swift/template/template_inputs.py (a leading system message is the system
  prompt; none: the template's default; "": no system prompt).
- TRL 1.16 (`trl`): its documentation, dataset_formats.md: conversational language modeling `{"messages": [...]}` for
  SFTTrainer and conversational preference `{"prompt": [...], "chosen": [...], "rejected": [...]}` for DPOTrainer,
  the system message inside the prompt; the tokenizer's chat template renders both (no system message: the template's
  own default, as in selfid).
- OpenAI fine-tuning (`openai`): its guides, supervised fine-tuning `{"messages": [...]}` and direct preference
  optimization `{"input": {"messages": [...]}, "preferred_output": [assistant message], "non_preferred_output":
  [assistant message]}`, one JSON object per line.
"""

from __future__ import annotations

import json

from selfid.errors import SelfidError

FORMATS = ("lf-sharegpt", "lf-alpaca", "swift", "trl", "openai")
LF_FOLDER = "llamafactory"
SHAREGPT_ROLE = {"user": "human", "assistant": "gpt"}  # LLaMA-Factory's default sharegpt tags


def parse_formats(text: str | None) -> list[str]:
    """`--format` as a list: comma-separated names of FORMATS, or all of them."""
    if not text or text.strip() in ("all", ""):
        return list(FORMATS)
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise SelfidError(f"--format {', '.join(unknown)}: not a format selfid writes; use one or more of "
                          f"{', '.join(FORMATS)} (comma-separated), or all")
    return list(dict.fromkeys(chosen))


def split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """(the system message's text or None, the other turns)."""
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], [dict(m) for m in messages[1:]]
    return None, [dict(m) for m in messages]


def expressible(fmt: str, messages: list[dict]) -> bool:
    """Whether `fmt` can train a conversation under its system prompt (LLaMA-Factory: not under an empty one)."""
    return not (fmt.startswith("lf-") and split_system(messages)[0] == "")


def _json_array(rows: list[dict]) -> str:
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _sharegpt_turns(turns: list[dict]) -> list[dict]:
    return [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in turns]


def _history(turns: list[dict]) -> list[list[str]]:
    """Alpaca's `history`: the [user, assistant] pairs before the last user turn."""
    return [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]


def _pair_prompt(pair: dict) -> list[dict]:
    head = [] if pair["system"] is None else [{"role": "system", "content": pair["system"]}]
    return head + [dict(m) for m in pair["messages"]]


def lf_sharegpt(sft: list[list[dict]], pairs: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """(SFT rows, preference rows, dataset_info.json entries) in LLaMA-Factory's sharegpt format."""
    rows = []
    for messages in sft:
        system, turns = split_system(messages)
        rows.append({"conversations": _sharegpt_turns(turns), "system": system or ""})
    ranked = [{"conversations": _sharegpt_turns(p["messages"]), "system": p["system"] or "",
               "chosen": {"from": "gpt", "value": p["chosen"]}, "rejected": {"from": "gpt", "value": p["rejected"]}}
              for p in pairs]
    info = {"file_name": "", "formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}}
    ranked_info = {"file_name": "", "formatting": "sharegpt", "ranking": True,
                   "columns": {"messages": "conversations", "system": "system", "chosen": "chosen",
                               "rejected": "rejected"}}
    return rows, ranked, {"sft": info, "pairs": ranked_info}


def lf_alpaca(sft: list[list[dict]], pairs: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """(SFT rows, preference rows, dataset_info.json entries) in LLaMA-Factory's alpaca format."""
    rows = []
    for messages in sft:
        system, turns = split_system(messages)
        rows.append({"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"],
                     "system": system or "", "history": _history(turns[:-2])})
    ranked = [{"instruction": p["messages"][-1]["content"], "input": "", "chosen": p["chosen"],
               "rejected": p["rejected"], "system": p["system"] or "", "history": _history(p["messages"][:-1])}
              for p in pairs]
    columns = {"prompt": "instruction", "query": "input", "system": "system", "history": "history"}
    info = {"file_name": "", "columns": {**columns, "response": "output"}}
    ranked_info = {"file_name": "", "ranking": True, "columns": {**columns, "chosen": "chosen", "rejected": "rejected"}}
    return rows, ranked, {"sft": info, "pairs": ranked_info}


def swift(sft: list[list[dict]], pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    rows = [{"messages": [dict(m) for m in messages]} for messages in sft]
    ranked = [{"messages": _pair_prompt(p) + [{"role": "assistant", "content": p["chosen"]}],
               "rejected_response": p["rejected"]} for p in pairs]
    return rows, ranked


def trl(sft: list[list[dict]], pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    rows = [{"messages": [dict(m) for m in messages]} for messages in sft]
    ranked = [{"prompt": _pair_prompt(p), "chosen": [{"role": "assistant", "content": p["chosen"]}],
               "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    return rows, ranked


def openai(sft: list[list[dict]], pairs: list[dict]) -> tuple[list[dict], list[dict]]:
    rows = [{"messages": [dict(m) for m in messages]} for messages in sft]
    ranked = [{"input": {"messages": _pair_prompt(p)},
               "preferred_output": [{"role": "assistant", "content": p["chosen"]}],
               "non_preferred_output": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    return rows, ranked


# each format's files: (SFT file, preference file), relative to the output folder
FILES = {
    "lf-sharegpt": (f"{LF_FOLDER}/identity_replay_sharegpt.json", f"{LF_FOLDER}/identity_replay_pairs_sharegpt.json"),
    "lf-alpaca": (f"{LF_FOLDER}/identity_replay_alpaca.json", f"{LF_FOLDER}/identity_replay_pairs_alpaca.json"),
    "swift": ("swift/identity_replay.jsonl", "swift/identity_replay_dpo.jsonl"),
    "trl": ("trl/identity_replay_sft.jsonl", "trl/identity_replay_dpo.jsonl"),
    "openai": ("openai/identity_replay_sft.jsonl", "openai/identity_replay_preference.jsonl"),
}
# the names the LLaMA-Factory files get in dataset_info.json
LF_NAMES = {"lf-sharegpt": ("selfid_identity", "selfid_identity_pairs"),
            "lf-alpaca": ("selfid_identity_alpaca", "selfid_identity_pairs_alpaca")}
USE = {
    "lf-sharegpt": "LLaMA-Factory: copy llamafactory/*.json into your dataset_dir and add the entries of "
                   "llamafactory/dataset_info.json to its dataset_info.json; then `dataset: YOUR_DATA,selfid_identity` "
                   "(stage: sft), or `dataset: selfid_identity_pairs` with `stage: dpo` (and pref_ftx for an SFT loss "
                   "on the chosen replies)",
    "lf-alpaca": "LLaMA-Factory, alpaca format: as lf-sharegpt, with selfid_identity_alpaca and "
                 "selfid_identity_pairs_alpaca",
    "swift": "ms-swift: `swift sft --dataset YOUR_DATA swift/identity_replay.jsonl`; "
             "`swift rlhf --rlhf_type dpo --dataset swift/identity_replay_dpo.jsonl`",
    "trl": "TRL: datasets.load_dataset('json', data_files='trl/identity_replay_sft.jsonl') for SFTTrainer, "
           "trl/identity_replay_dpo.jsonl for DPOTrainer",
    "openai": "OpenAI fine-tuning: openai/identity_replay_sft.jsonl (method supervised), "
              "openai/identity_replay_preference.jsonl (method dpo)",
}


def render(fmt: str, sft: list[list[dict]], pairs: list[dict]) -> dict[str, str]:
    """{relative path: file text} of one format; LLaMA-Factory's dataset_info.json is written by `files`."""
    sft_file, pairs_file = FILES[fmt]
    if fmt in ("lf-sharegpt", "lf-alpaca"):
        rows, ranked, _ = (lf_sharegpt if fmt == "lf-sharegpt" else lf_alpaca)(sft, pairs)
        return {sft_file: _json_array(rows), pairs_file: _json_array(ranked)}
    rows, ranked = {"swift": swift, "trl": trl, "openai": openai}[fmt](sft, pairs)
    return {sft_file: _jsonl(rows), pairs_file: _jsonl(ranked)}


def dataset_info(formats: list[str]) -> str | None:
    """LLaMA-Factory's dataset_info.json for the LLaMA-Factory formats among `formats` (None: none of them), each
    entry naming its file relative to the folder."""
    entries = {}
    for fmt in formats:
        if fmt not in LF_NAMES:
            continue
        _, _, info = (lf_sharegpt if fmt == "lf-sharegpt" else lf_alpaca)([], [])
        for kind, name, path in (("sft", LF_NAMES[fmt][0], FILES[fmt][0]), ("pairs", LF_NAMES[fmt][1], FILES[fmt][1])):
            entries[name] = {**info[kind], "file_name": path.split("/", 1)[1]}
    return json.dumps(entries, ensure_ascii=False, indent=2) + "\n" if entries else None
