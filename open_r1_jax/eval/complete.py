"""``complete``: held-out prompt -> completion, generated greedily and compared with the reference.

The check of supervised fine-tuning (``train.stage: sft``): the prompts of ``complete.file``
(prompt-completion or chat JSONL, as the SFT stage reads it, rendered with the model's chat
template) or, by default, the held-out examples of the embedded instruction demo (docstring ->
function, from held-out stdlib files). Each prompt is continued greedily until the end-of-document
token, the chat template's end of turn or ``complete.max_new_tokens``. Per example:

    exact        the generation equals the reference (surrounding whitespace ignored)
    first_line   its first line equals the reference's (for the demo: the requested signature)
    parses       it is non-blank valid Python (``ast.parse``): meaningful for code completions
    similarity   difflib's ratio of the two texts (0-1)

Each figure is a mean over the examples with its standard error.
"""

from __future__ import annotations

import ast
import difflib

from tqdm import tqdm

from open_r1_jax.data.chat import END_OF_TURN
from open_r1_jax.eval.mc import mean_stderr


def _examples(model, cfg, seed: int):
    from open_r1_jax.data import instruct
    from open_r1_jax.data.chat import ChatTemplate, template_for
    from open_r1_jax.data.tokenizer import BPETokenizer

    if not cfg.file:
        found = instruct.demo_examples(True, cfg.n or 10**9, seed, model.config.max_seq_len)
        return found, "held-out examples of the embedded instruction demo", []
    report = instruct.InstructReport()
    template = ChatTemplate(template_for(model.path), eos_token=BPETokenizer.EOS)
    found = instruct.read_examples(cfg.file, template, cfg.max_bad_fraction, report)
    return (found[: cfg.n] if cfg.n else found), cfg.file, report.bad


def _parses(text: str) -> bool:
    if not text.strip():  # blank text parses, but completes nothing
        return False
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].rstrip()


def run(model, cfg, seed: int, progress: bool = True) -> dict:
    from open_r1_jax.generate import Generator

    examples, source, bad = _examples(model, cfg, seed)
    if not examples:
        raise ValueError(f"complete: no example in {source}")
    tok, max_len = model.tokenizer, model.config.max_seq_len
    prompts = [tok.encode(ex.prompt).tolist()[-(max_len - 1) :] for ex in examples]
    gen = Generator(model.config, model.pre.params, model.pre.model_state)
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))  # similar lengths share a compilation
    texts = [""] * len(examples)
    stop = lambda i, toks: END_OF_TURN in tok.decode(toks)
    bar = tqdm(total=len(order), desc="complete: generating", disable=not progress, leave=False)
    for start in range(0, len(order), cfg.batch):
        idx = order[start : start + cfg.batch]
        room = max_len - max(len(prompts[i]) for i in idx)
        out = gen.generate([prompts[i] for i in idx], max(1, min(cfg.max_new_tokens, room)), stop_ids=(tok.eos_id,),
                           should_stop=stop)  # fmt: skip
        for i, toks in zip(idx, out.tokens):
            texts[i] = tok.decode(toks).split(END_OF_TURN)[0]
        bar.update(len(idx))
    bar.close()
    rows = []
    for ex, text in zip(examples, texts):
        ref = ex.completion.split(END_OF_TURN)[0]
        rows.append({"where": ex.where, "prompt": ex.prompt, "reference": ref, "generated": text,
                     "exact": text.strip() == ref.strip(), "first_line": _first_line(text) == _first_line(ref),
                     "parses": _parses(text),
                     "similarity": difflib.SequenceMatcher(None, text, ref, autojunk=False).ratio()})  # fmt: skip
    metrics = {k: mean_stderr([float(r[k]) for r in rows]) for k in ("exact", "first_line", "parses", "similarity")}
    return {"metrics": metrics, "config": {"data": source, "max_new_tokens": cfg.max_new_tokens}, "bad_lines": bad,
            "samples": rows}  # fmt: skip
