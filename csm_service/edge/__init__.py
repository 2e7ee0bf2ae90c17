"""The aiohttp edge: HTTP routes, WebSocket sessions, OpenAPI. Talks to engines over gRPC only."""
