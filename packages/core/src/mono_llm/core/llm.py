"""The offline engine: `LLM(model=...).generate(prompts, SamplingParams(...))`, as in vLLM."""

from __future__ import annotations

import itertools
from collections.abc import Sequence as SequenceABC
from typing import Any

from mono_llm.core.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams, step_params
from mono_llm.core.config import EngineArgs
from mono_llm.core.engine.core import EngineCore
from mono_llm.core.engine.offline_loop import run_until_finished
from mono_llm.core.errors import InvalidRequestError, ParallelConfigError
from mono_llm.core.gc_heap import freeze_startup_heap
from mono_llm.core.inputs import PromptType, TokensPrompt, encoder_features_of
from mono_llm.core.outputs import RequestOutput
from mono_llm.core.pooling.offline import PoolingLLMMixin
from mono_llm.core.sampling_params import RequestOutputKind, SamplingParams

ChatMessages = list[dict[str, Any]]


class LLM(PoolingLLMMixin):
    """Batched offline generation over one model; every prompt runs to completion.

    Pooling models add `embed`, `classify`, `score` and `encode` (PoolingLLMMixin).
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, **engine_args: Any) -> None:
        args = EngineArgs(model=model, tokenizer=tokenizer, **engine_args)
        if args.data_parallel_size > 1:
            raise ParallelConfigError(
                "data_parallel_size: replicas serve one model behind the server (`mono-llm "
                "serve --data-parallel-size N`, build_app); an offline LLM runs one engine.",
                param="data_parallel_size",
            )
        self.engine_args = args
        self.llm_engine = EngineCore.from_engine_args(args)
        self._request_counter = itertools.count()
        freeze_startup_heap()  # the step loop runs in this process: no long collector pauses

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams from the model's generation_config.json (generation_config="auto")."""
        return SamplingParams(**self.llm_engine.get_default_sampling_params())

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: PromptType | SequenceABC[PromptType],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool = True,
        *,
        priority: SequenceABC[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in input order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise InvalidRequestError(
                    f"Got {len(prompts)} prompts but {len(params_list)} sampling params.",
                    param="sampling_params",
                )
        if priority is not None and len(priority) != len(prompts):
            raise InvalidRequestError(
                f"Got {len(prompts)} prompts but {len(priority)} priorities.", param="priority"
            )
        return self._run(prompts, params_list, use_tqdm, priority)

    def beam_search(
        self, prompts: PromptType | SequenceABC[PromptType], params: BeamSearchParams
    ) -> list[BeamSearchOutput]:
        """Beam search for each prompt (vLLM's `LLM.beam_search`): the best
        `params.beam_width` hypotheses, best first (see `mono_llm.core.beam_search`). The
        searches run in lockstep: one batch of one-token requests per step for all prompts."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        tokenizer = self.get_tokenizer()
        eos = set(self.llm_engine.eos_token_ids)
        searches = [
            BeamSearch(
                list(tokenizer(p).input_ids) if isinstance(p, str) else list(p["prompt_token_ids"]),
                params,
                eos,
            )
            for p in prompts
        ]
        request = step_params(params)
        while live := [s for s in searches if not s.done]:
            batches = [s.prompts() for s in live]
            outputs = self.generate(
                [TokensPrompt(prompt_token_ids=t) for batch in batches for t in batch],
                request,
                use_tqdm=False,
            )
            position = 0
            for search, batch in zip(live, batches, strict=True):
                chunk = outputs[position : position + len(batch)]
                search.advance([o.outputs[0].logprobs[0] for o in chunk])
                position += len(batch)
        results = []
        for search in searches:
            sequences = search.result()
            for sequence in sequences:
                sequence.text = tokenizer.decode(sequence.output_tokens, skip_special_tokens=True)
            results.append(BeamSearchOutput(sequences))
        return results

    def chat(
        self,
        messages: ChatMessages | SequenceABC[ChatMessages],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        use_tqdm: bool = True,
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to conversations, rendered with the tokenizer's chat template."""
        if not messages:
            raise InvalidRequestError("messages must not be empty.", param="messages")
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        tokenizer = self.get_tokenizer()
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            # As vLLM and transformers >= 4.44: no silent fallback template.
            raise InvalidRequestError(
                "This model's tokenizer defines no chat template (none in tokenizer_config.json, "
                "chat_template.jinja or chat_template.json): pass chat_template=<jinja> to "
                "LLM.chat, or use generate() with plain prompts.",
                param="chat_template",
            )
        prompts: list[PromptType] = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(
                conversation,
                tools=tools,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **(chat_template_kwargs or {}),
            )
            # The template already holds BOS and friends: do not add them twice.
            ids = tokenizer.encode(text, add_special_tokens=False)
            prompts.append(TokensPrompt(prompt_token_ids=ids, prompt=text))
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(
        self,
        prompts: list[PromptType],
        params_list: list[SamplingParams],
        use_tqdm: bool,
        priority: SequenceABC[int] | None,
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        # Validate everything first, so a bad prompt fails the call before any work is queued.
        prepared = [
            engine.process_prompt(prompt, params)
            for prompt, params in zip(prompts, params_list, strict=True)
        ]

        def submit(index: int, request_id: str) -> None:
            text, token_ids = prepared[index]
            engine.add_request(
                request_id,
                token_ids,
                params_list[index].clone(output_kind=RequestOutputKind.FINAL_ONLY),
                priority=priority[index] if priority is not None else 0,
                prompt_text=text,
                prompt_token_ids=token_ids,
                encoder_features=encoder_features_of(prompts[index]),
            )

        return run_until_finished(engine, len(prepared), submit, self._next_request_id, use_tqdm)

    def _next_request_id(self) -> str:
        return str(next(self._request_counter))
