"""Pooling models: turn a prompt's hidden states into an embedding, class probabilities or a score.

- `config`: the pooling pipeline a model folder describes (sentence-transformers files).
- `tasks`: what a model is served for (generate / embed / classify) and what requests may ask.
- `pooler`: ragged-batch pooling (mean, CLS, last token, max) and per-request post-processing.
- `engine`: the pooling side of `EngineCore` (prompt preparation, the pooling step, outputs).
- `runner`: `EncoderModelRunner`, the model runner of encoders (no KV cache).
- `scoring`: score pairs (1:1, 1:N, N:N), cross-encoder prompts and cosine scores.
- `offline`: `LLM.encode`, `embed`, `classify` and `score`.

The encoder models themselves live in models/bert.py, loaded by the shared model_loader.py.
"""
