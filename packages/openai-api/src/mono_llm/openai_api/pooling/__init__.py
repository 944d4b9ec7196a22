"""Pooling endpoints: /v1/embeddings, /pooling, /classify, /score, /rerank, /v1/rerank, /v2/rerank."""
