"""POST /v1/responses and its stored-response routes (OpenAI's Responses API)."""
