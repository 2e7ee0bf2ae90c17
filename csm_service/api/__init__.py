"""The wire formats clients speak: typed models (pydantic v2) of every HTTP, WebSocket, Twilio and
OpenAI body and message, the error a client is answered with (:mod:`.errors`: its bodies and headers,
and the speech service's errors as one), and /openapi.json made from them.

One description of each field, from which both the validation of requests and the spec are made,
shared by the HTTP edge and the RunPod host (:mod:`csm_service.serverless`). This package imports
only :mod:`csm_service.core`, pydantic, numpy and the standard library (never aiohttp, grpc or torch).

One module per surface: :mod:`.speak` (``POST /synthesize``, the WebSocket ``synthesize``, a RunPod
job's input), :mod:`.websocket` (the native WebSocket's messages), :mod:`.voices` (``/v1/voices``),
:mod:`.openai` (``/v1/audio/speech`` and the lists), :mod:`.twilio_stream` (Twilio Media Streams'
messages, read and written), :mod:`.twilio` (``/v1/calls``), :mod:`.responses` (errors, /health,
/synthesize's answer). :mod:`.base` holds the field types and the schema spelling,
:mod:`.validation` turns a pydantic error into the :class:`~.errors.ApiError` (and the seed's
texts) a client has always seen; :mod:`.routes` lists every HTTP operation and :mod:`.openapi`
writes the spec and the /docs page from it.

A new request field goes into its model, with its type, bounds, default and description; the
handler reads it from the validated model, and /openapi.json shows it. JSON is parsed by
:mod:`.safe_json` first: the models only validate parsed values.
"""
