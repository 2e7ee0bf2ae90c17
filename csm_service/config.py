"""Frozen configuration: the named model shapes and the service options.

This is the one module that reads the environment (``CSM_*`` variables) and the command line; every
other module receives the dataclasses built here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from csm_service.core.constants import MAX_TEXT_CHARS, NUM_CODEBOOKS, NUM_MIMI_CODES
from csm_service.tenants import ApiKey, KeyFileError, merge_keys, parse_key_file, plain_key

DEFAULT_MODEL = "sesame/csm-1b"
TINY_RANDOM = "tiny-random"


@dataclass(frozen=True)
class TransformerConfig:
    """One Llama-3.2-style decoder stack (the CSM backbone or its depth decoder)."""

    num_layers: int
    dim: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    norm_eps: float = 1e-5
    rope_base: float = 500_000.0
    # Llama-3 RoPE scaling, in torchtune's terms (Sesame's original code).
    rope_scale_factor: float = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class CsmConfig:
    """The whole CSM model: backbone, depth decoder, embeddings and heads."""

    name: str
    backbone: TransformerConfig
    decoder: TransformerConfig
    text_vocab_size: int = 128_256
    audio_vocab_size: int = NUM_MIMI_CODES + 3  # 2048 Mimi codes + 3 reserved ids that must never reach Mimi
    num_codebooks: int = NUM_CODEBOOKS
    max_seq_len: int = 2048

    @property
    def num_columns(self) -> int:
        """Columns per position: 32 codebooks + 1 text token."""
        return self.num_codebooks + 1


CSM_1B = CsmConfig(
    name="csm-1b",
    backbone=TransformerConfig(num_layers=16, dim=2048, num_heads=32, num_kv_heads=8, mlp_dim=8192),
    decoder=TransformerConfig(num_layers=4, dim=1024, num_heads=8, num_kv_heads=2, mlp_dim=8192),
)

# Test size: the same structure (33 columns, 32 codebooks of 2051, GQA, scaled RoPE) at a size
# that runs on any CPU. Its text vocabulary fits the byte-level tokenizer (256 bytes + BOS/EOS).
TINY = CsmConfig(
    name="tiny",
    backbone=TransformerConfig(num_layers=2, dim=128, num_heads=4, num_kv_heads=2, mlp_dim=256),
    decoder=TransformerConfig(num_layers=2, dim=64, num_heads=4, num_kv_heads=2, mlp_dim=128),
    text_vocab_size=258,
)

NAMED_CONFIGS: dict[str, CsmConfig] = {"csm-1b": CSM_1B, "tiny": TINY}


QUANT_MODES = ("none", "int8", "int8_dynamic")  # EngineConfig.quantize
MIMI_DTYPES = ("float32", "bfloat16")  # EngineConfig.mimi_dtype


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs the model."""

    model: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16
    max_batch: int = 8  # batch slots (concurrent utterances)
    max_queue: int = 64  # waiting requests beyond the slots; more is refused as overloaded
    first_chunk_frames: int = 1  # frames in the first audio chunk (80 ms each)
    chunk_frames: int = 4  # frames in later chunks; they ramp up to it, never longer than the audio already sent
    use_cuda_graphs: bool = True  # ignored on CPU; --no-cuda-graphs is the eager switch
    compile_cpu: bool = True  # CPU: compile the frame step with Inductor; --no-compile is the eager switch
    compile_cache_dir: str = ""  # Inductor's on-disk cache (a restart reuses it); "" = its default under /tmp
    # CPU: our own AVX-512 matrix-vector kernels (model/kernels) where the CPU has them; off: oneDNN/fbgemm
    cpu_kernels: bool = True
    quantize: str = "none"  # none | int8 | int8_dynamic (CPU: int8 projections, model/quantize.py)
    mimi_dtype: str = "float32"  # float32 | bfloat16: Mimi's streaming decode (bf16: ~2.5x faster on CPU)
    # CPU threads of the engine thread (its matrix products); other threads that run torch use one
    # (engine/threads.py). 0 = torch's default, one per core; set it to the pod's CPU limit.
    cpu_threads: int = 0
    mimi_weights: str | None = None  # local Mimi weights; default: moshi's file via the hub cache
    seed: int = 0  # seed of the tiny-random weights
    prefix_cache_mb: int = 1024  # device memory for voice-prompt KV prefixes (0: no cache)
    # Prefill runs between frame steps, at most this many prompt positions per step (0: each prompt
    # in one piece, which stalls live streams for the whole prefill). Smaller: shorter stalls for
    # live streams, but fewer short requests admitted per step under a burst (docs/benchmarks.md).
    prefill_chunk_positions: int = 512
    # Batch slots are sized at start-up from memory, max_batch at most (engine/memory.py): the KV
    # caches may take what is free less (1 - memory_utilization) x total (CUDA: the GPU; CPU: RAM)...
    memory_utilization: float = 0.9
    memory_budget_mb: int = 0  # ...or, when set, this budget for the model's memory (weights included)

    def __post_init__(self) -> None:
        if self.quantize not in QUANT_MODES:
            raise ValueError(f"quantize: one of {', '.join(QUANT_MODES)}, not {self.quantize!r}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0: one per core), not {self.cpu_threads}")
        if self.mimi_dtype not in MIMI_DTYPES:
            raise ValueError(f"mimi_dtype: one of {', '.join(MIMI_DTYPES)}, not {self.mimi_dtype!r}")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the processes need; built once at start-up by :func:`load_service_config`."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "0.0.0.0"
    port: int = 8000
    health_port: int = 0  # a second port for /ping and /health (RunPod's PORT_HEALTH); 0 = none
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    # gRPC between edge and engines (docs/deploy.md, "gRPC keepalive and connection age"). Both ends
    # ping every grpc_keepalive_time_s; the engine permits pings every grpc_min_ping_interval_s,
    # which must stay <= the edge's grpc_keepalive_time_s, or the engine sees its pings as abuse.
    grpc_keepalive_time_s: float = 10.0  # ping each connection this often, with calls or without
    grpc_keepalive_timeout_s: float = 10.0  # a ping unanswered this long drops the connection (dead peer)
    grpc_min_ping_interval_s: float = 5.0  # engine: pings this often are allowed; sooner ones are strikes
    grpc_max_ping_strikes: int = 0  # engine: strikes before GOAWAY too_many_pings; 0 = never GOAWAY
    grpc_max_connection_age_s: float = 300.0  # engine: then GOAWAY, clients reconnect + re-resolve DNS; 0 = never
    grpc_max_connection_age_grace_s: float = 600.0  # engine: calls in flight then get this long (> request_timeout_s)
    metrics_port: int = 0  # 0: no separate metrics port
    engine_addresses: tuple[str, ...] = ()
    data_dir: str = "./data"
    api_keys: tuple[str, ...] = ()  # CSM_API_KEYS=k1,k2; empty (and no file) = open
    api_keys_file: str = ""  # one key per line; optional tenant=, scope=admin, max_inflight= (tenants.py)
    # With keys on, what the open routes tell a caller without a key (docs/security.md):
    public_health_detail: bool = False  # False: /health says only status, model_loaded, device
    public_metrics: bool = False  # False: /metrics needs the bearer key (Prometheus: authorization)
    log_level: str = "INFO"
    drain_timeout_s: float = 30.0  # SIGTERM: how long running utterances may take to finish
    # SIGTERM on an edge: live WebSocket sessions and Twilio calls go on (new utterances included)
    # until they end or this passes; then each stream ends with "Shutting down" and closes with 1001.
    call_drain_s: float = 300.0
    ready_wait_s: float = 120.0  # a Twilio call that arrives while the model loads is held this long
    # Edge bounds: every one answers with a clear error, never by dropping the session.
    max_text_chars: int = MAX_TEXT_CHARS  # per synthesize request (4096, as OpenAI's input)
    max_body_bytes: int = 1 << 20  # HTTP request body
    max_json_depth: int = 32  # nesting of arrays/objects in client JSON (ours: 3); deeper is a 400 / an error reply
    max_ws_message_bytes: int = 64 << 10  # one WebSocket message (larger: an error reply)
    max_sessions: int = 1000  # open WebSocket sessions per edge process
    # WebSockets not yet authenticated (keys on and none at the upgrade, or a Twilio stream before its
    # start) have their own budget, outside max_sessions; past it the longest-waiting one is closed (1013).
    max_unauthenticated_sessions: int = 64
    # Connections (docs/security.md, "Connections"): a request's line and headers must arrive within
    # http_header_timeout_s of the connection (or of its first byte on a kept-alive one), its body within
    # http_body_timeout_s of the headers (408). Past max_connections open, a new connection closes the
    # longest-idle one; if none is idle, it may only ask for /health or /ping (health_reserve_connections
    # of them), else it is answered 503 and closed.
    http_header_timeout_s: float = 10.0  # 0 = no deadline
    http_body_timeout_s: float = 60.0  # 0 = no deadline
    max_connections: int = 4096  # open TCP connections per edge process (all its ports); 0 = no cap
    health_reserve_connections: int = 16  # more connections past max_connections, for /health and /ping only
    max_inflight_per_session: int = 8  # synthesize requests queued or running on one session
    request_timeout_s: float = 300.0  # gRPC deadline of one synthesis
    max_audio_length_ms: int = 163_840  # the largest max_audio_length_ms a request may ask for
    rate_limit_per_s: float = 0.0  # synthesis requests per second per API key (or peer); 0 = no limit
    rate_limit_burst: int = 20  # requests a client may make at once before the rate applies
    # Fairness between clients: utterances in flight at once, on HTTP, WebSocket, Twilio and OpenAI
    # routes together; more is 429. 0 = no cap.
    max_inflight_per_key: int = 16  # per tenant (keys on); 2x the default 8 slots; a key file's max_inflight= overrides
    # Keys off: per peer address. Off by default: one Twilio bridge or internal service speaks for
    # every call from one address, and a cap there would refuse its calls.
    max_inflight_per_peer: int = 0
    max_voices_per_tenant: int = 100  # stored voice profiles per tenant; more is 409. 0 = no limit
    # gRPC port, per tenant (keys on) or peer address (keys off); admin keys and serve's own edge are
    # exempt. -1 = the engine's max_batch + max_queue // 2 (half the queue stays for others); 0 = no cap.
    grpc_max_inflight_per_key: int = -1
    session_context_positions: int = 1024  # "context": "session": earlier turns kept within this
    max_piece_chars: int = 400  # longer text is generated in sentence-aligned pieces of at most this
    max_upload_bytes: int = 20 << 20  # a voice upload (multipart)
    max_form_parts: int = 16  # parts of a voice upload (it has 5 fields); more is 413, reading stops at once
    max_voice_seconds: float = 30.0  # a voice prompt's audio: leaves room in the 2048 positions
    # Audio files (voices, WebSocket context, say --voice) are refused by their header past these,
    # before decoding; a decode holds at most max_voice_seconds x max_audio_rate_hz mono samples.
    max_audio_channels: int = 2  # channels of an audio file (mixed to mono)
    max_audio_rate_hz: int = 192_000  # sample rate of an audio file (above 48 kHz: resampled to 48 kHz)
    ws_auth_timeout_s: float = 10.0  # keys on, none at the upgrade: the "auth" message must come by then
    ws_idle_timeout_s: float = 300.0  # close a session with no message and no work for this long; 0 = never
    twilio_lead_ms: int = 60  # Twilio media streams: how far ahead of the playhead frames are sent (the least)
    twilio_lead_max_ms: int = 400  # Twilio: the lead grows up to this while generation nears real time
    twilio_echo_gate_db: float = 16.0  # Twilio: caller audio this far below the bot's recent audio is its echo
    throttle_rtf: float = 0.0  # debug (benchmarks): generation no faster than this real-time factor; 0 = off
    twilio_prestart_bytes: int = 65536  # Twilio: bytes a stream may send before its start (more: closed, 1008)
    runpod_concurrency: int = 0  # jobs a RunPod queue worker takes at once; 0 = the engine's max_batch


_ENV_PREFIX = "CSM_"


def _coerce(value: str, like: object) -> object:
    if isinstance(like, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, tuple):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


def env_overrides(defaults: object, environ: dict[str, str] | None = None) -> dict[str, object]:
    """``CSM_<FIELD>`` values for the fields of a config dataclass, coerced to the field's type."""
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, object] = {}
    if "CSM_ENGINE" in environ and "engine_addresses" in {f.name for f in dataclasses.fields(defaults)}:  # type: ignore[arg-type]
        out["engine_addresses"] = _coerce(environ["CSM_ENGINE"], ())
    for f in dataclasses.fields(defaults):  # type: ignore[arg-type]
        key = _ENV_PREFIX + f.name.upper()
        if key in environ and not dataclasses.is_dataclass(getattr(defaults, f.name)):
            out[f.name] = _coerce(environ[key], getattr(defaults, f.name))
    return out


def build_config(cli: dict[str, object], environ: dict[str, str] | None = None) -> ServiceConfig:
    """Defaults <- ``CSM_*`` environment <- command-line flags (``None`` means "not given").

    ``cli`` keys are field names of EngineConfig or ServiceConfig.
    """
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    service_fields = {f.name for f in dataclasses.fields(ServiceConfig)} - {"engine"}
    given = {k: v for k, v in cli.items() if v is not None}
    unknown = set(given) - engine_fields - service_fields
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    engine = dataclasses.replace(EngineConfig(), **env_overrides(EngineConfig(), environ))
    engine = dataclasses.replace(engine, **{k: v for k, v in given.items() if k in engine_fields})
    service = dataclasses.replace(ServiceConfig(), **env_overrides(ServiceConfig(), environ))
    service_given = {k: v for k, v in given.items() if k in service_fields}
    if isinstance(service_given.get("engine_addresses"), str):
        service_given["engine_addresses"] = tuple(
            a.strip() for a in str(service_given["engine_addresses"]).split(",") if a.strip()
        )
    return dataclasses.replace(service, engine=engine, **service_given)


def api_key_entries(cfg: ServiceConfig) -> tuple[ApiKey, ...]:
    """The keys clients may present, with their tenants: ``api_keys`` (each its own tenant) plus
    the lines of ``api_keys_file`` (format: :mod:`csm_service.tenants`). KeyFileError (a
    ValueError naming the file and line) for a line that cannot be used."""
    keys = [plain_key(k) for k in cfg.api_keys if k]
    if cfg.api_keys_file:
        try:
            with open(cfg.api_keys_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{cfg.api_keys_file}: cannot read the API key file: {exc}") from None
        keys += parse_key_file(text, cfg.api_keys_file)
    return merge_keys(keys)


def api_keys(cfg: ServiceConfig) -> tuple[str, ...]:
    """The keys alone (:func:`api_key_entries` without their tenants)."""
    return tuple(entry.key for entry in api_key_entries(cfg))
