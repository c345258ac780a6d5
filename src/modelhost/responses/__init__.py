"""The Responses API as plain functions, without HTTP: items → turns (`items`), the request's rules and
its `ChatInput` (`request`), the stored chain and context (`context`), the Response object (`render`),
its stream of events (`events`), background runs (`background`) and compaction (`compaction`).
`api/responses.py` is the thin route over them."""
