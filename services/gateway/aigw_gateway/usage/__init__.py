"""What the gateway reads from the bodies it forwards, per API dialect (it forwards them byte for byte).

- :mod:`.dialects`: ``DIALECTS``, the one table endpoint → dialect (chat completions, Responses, Messages);
- :mod:`.common`: the dialect interface (:class:`~.common.Dialect`) and what it returns
  (``RequestInfo``, ``Extracted``, ``ToolCall``);
- :mod:`.request`: request-body reading shared by the dialects (client-facing 400 messages);
- :mod:`.stream`: the streaming extractor (SSE via :mod:`aigw_common.sse`, fed event by event);
- :mod:`.chat`, :mod:`.responses`, :mod:`.messages`: one module per API.
"""
