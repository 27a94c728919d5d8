"""The HTTP and WebSocket routes of ComfyUI's PromptServer, one module per group; server.py wires
them (each also under `/api`). Each module's `routes(process)` returns its route table; handlers
read `process.state` at each request because a restart replaces it."""
