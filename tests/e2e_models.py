"""Helpers for the end-to-end tests of one model architecture: serve a model folder as a user
does (`mono-llm serve <folder>` in a subprocess) and compute transformers' greedy chat reply,
the reference the server's answer must equal."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tests.conftest import free_port, mono_llm_command, wait_ready


@contextlib.contextmanager
def serve_folder(folder: Path, name: str, log_path: Path, *extra_args: str) -> Iterator[Any]:
    """`mono-llm serve <folder>` on a free local port until the block ends; yields an `openai`
    client for it. The server log must hold no traceback when it stops."""
    import openai

    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*mono_llm_command(), "serve", str(folder), "--served-model-name", name,
             "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log",
             *extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path)
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    assert "Traceback" not in log_path.read_text()


def hf_chat_reply(
    folder: Path, messages: list[dict[str, Any]], max_new_tokens: int, *, stop_at_eos: bool = True
) -> tuple[str, str, int]:
    """(prompt text, reply text, tokens generated) of transformers' greedy answer in float32
    with eager attention, under the folder's chat template, stopping on the EOS ids of
    generation_config.json as the server does (unless `stop_at_eos` is off: `ignore_eos`)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    stops = model.generation_config.eos_token_id
    stops = (stops if isinstance(stops, list) else [stops]) if stop_at_eos else []
    # Replace (not merge with) the folder's sampling defaults: greedy, no early stop.
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0
    )
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids))
    new = out[0, ids.shape[1] :].tolist()
    answer = next((new[:i] for i, t in enumerate(new) if t in stops), new)
    return text, tokenizer.decode(answer, skip_special_tokens=True), len(answer)
