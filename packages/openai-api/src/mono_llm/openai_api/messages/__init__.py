"""POST /v1/messages: the Anthropic Messages API, so the `anthropic` client works unchanged."""
