"""/v1/realtime: streaming transcription over a WebSocket (vLLM's and OpenAI's protocols)."""
