"""The OpenAI-compatible surface (``/openai/v1``): OpenAI's Responses and Conversations APIs, as
the Open Responses specification describes them, translated onto the same turns, conversations
and messages as ``/v1``. It holds no SQL and no HTTP client of its own."""
