"""The chat-template worker process: renders templates in a guarded jinja2 sandbox.

A chat template is code (from the model folder, or from a client with
--trust-request-chat-template): a loop can run for hours and `'x' * 400000000` allocates
hundreds of megabytes. Rendering happens here, in a separate process the server kills when a
render passes its deadline, so no template can pin the server's event loop or keep a CPU busy.
Inside, rendering is transformers' own (same variables, filters, `continue_final_message`
handling) on a stricter sandbox: jinja2's ImmutableSandboxedEnvironment plus bounds on
`range`, on string/list repetition and concatenation, and on the size of any number passed to
a call (`'x'.ljust(10**9)`), and the process's address space is capped.

Protocol: one JSON job per line on stdin, one JSON answer per line on the original stdout
(`{"text": ...}` or `{"error": ...}`). Run as `python -m mono_llm.openai_api.template_worker`.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

# Largest rendered prompt, in characters; also bounds every intermediate string or list.
MAX_RENDERED_CHARS = 16 * 1024 * 1024
# Largest range() a template may iterate (jinja2's own sandbox allows 100,000 per call).
MAX_RANGE = 10_000
# Address-space cap of the worker process (it needs ~200 MB for Python and jinja2).
MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024


def _guarded_sandbox() -> type:
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def sized(value: Any) -> int:
        return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0

    def safe_range(*args: int) -> range:
        values = range(*args)
        if len(values) > MAX_RANGE:
            raise SecurityError(f"range() of more than {MAX_RANGE} items is not allowed.")
        return values

    class GuardedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.globals["range"] = safe_range

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                count = right if isinstance(right, int) else left if isinstance(left, int) else 1
                if max(sized(left), sized(right)) * max(count, 0) > MAX_RENDERED_CHARS:
                    raise SecurityError("the template builds a string or list that is too long.")
            elif operator == "**":
                if isinstance(right, int) and abs(right) > 1024:
                    raise SecurityError("exponents above 1024 are not allowed in templates.")
            elif operator == "+" and sized(left) + sized(right) > MAX_RENDERED_CHARS:
                raise SecurityError("the template builds a string or list that is too long.")
            return super().call_binop(context, operator, left, right)

        def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            for value in (*args, *kwargs.values()):
                if isinstance(value, int) and abs(value) > MAX_RENDERED_CHARS:
                    raise SecurityError("numbers this large are not allowed in template calls.")
            return super().call(__context, __obj, *args, **kwargs)

    return GuardedSandbox


def _install_sandbox() -> Any:
    """transformers' renderer, building its environment from the guarded sandbox."""
    import transformers.utils.chat_template_utils as utils

    utils.ImmutableSandboxedEnvironment = _guarded_sandbox()
    return utils.render_jinja_template


def render(render_jinja_template: Any, job: dict[str, Any]) -> str:
    rendered, _ = render_jinja_template(
        conversations=[job["messages"]],
        tools=job.get("tools"),
        documents=job.get("documents"),
        chat_template=job["template"],
        continue_final_message=job.get("continue_final_message", False),
        add_generation_prompt=job.get("add_generation_prompt", False),
        **job.get("kwargs", {}),
    )
    text = rendered[0]
    if len(text) > MAX_RENDERED_CHARS:
        raise ValueError(f"the rendered prompt is longer than {MAX_RENDERED_CHARS} characters.")
    return text


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout = sys.stderr  # whatever a template or library prints must not break the protocol
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    sys.setrecursionlimit(2000)
    render_jinja_template = _install_sandbox()
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        try:
            answer: dict[str, Any] = {"text": render(render_jinja_template, json.loads(line))}
        except MemoryError:
            answer = {"error": "the template used more memory than allowed."}
        except RecursionError:
            answer = {"error": "the template recursed too deeply."}
        except Exception as exc:  # a template error is the template author's message
            answer = {"error": str(exc) or type(exc).__name__}
        answers.write(json.dumps(answer, ensure_ascii=False) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
