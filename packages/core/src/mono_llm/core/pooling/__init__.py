"""Pooling models: turn a prompt's hidden states into an embedding, class probabilities or a score.

- `config`: the pooling pipeline a model folder describes (sentence-transformers files).
- `tasks`: what a model is served for (generate / embed / classify) and what requests may ask.
- `pooler`: ragged-batch pooling (mean, CLS, last token, max) and per-request post-processing.
- `model_loader`: builds and loads the encoder pooling models (models/bert.py).
"""
