"""Where a model comes from: a hub id (cache first), a local directory or file, or tiny-random.

Nothing here downloads anything unless the hub is reachable; an unreachable hub with an empty
cache gives :class:`ModelNotAvailable` naming the files it needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from csm_service.config import CSM_1B, TINY, TINY_RANDOM, CsmConfig
from csm_service.model.checkpoint import (
    CheckpointError,
    config_from_json,
    read_state_dict,
    to_internal_names,
    validate,
)
from csm_service.model.csm import CSM
from csm_service.model.tokenizer import ByteTokenizer, Llama3Tokenizer, TextTokenizer

log = logging.getLogger(__name__)

# The ungated copy of the Llama-3.2 tokenizer used when a checkpoint ships none.
FALLBACK_TOKENIZER_REPO = "unsloth/Llama-3.2-1B"
HUB_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "ckpt.pt", "config.json", "tokenizer.json")


class ModelNotAvailable(RuntimeError):
    """The weights are neither on disk nor reachable (names the repo and files)."""


@dataclass(frozen=True)
class ModelFiles:
    weights: tuple[Path, ...]
    config_json: Path | None
    tokenizer_json: Path | None


def find_weights(directory: Path) -> tuple[Path, ...]:
    """The weight files of a checkpoint directory, preferring safetensors (shards via index)."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        import json

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return tuple(directory / s for s in shards)
    for name in ("model.safetensors", "ckpt.safetensors", "ckpt.pt", "model.pt", "pytorch_model.bin"):
        if (directory / name).exists():
            return (directory / name,)
    found = sorted(p for p in directory.glob("*.safetensors") if not p.name.startswith("tokenizer-"))
    return tuple(found)


def _local_files(path: Path) -> ModelFiles:
    directory = path if path.is_dir() else path.parent
    weights = find_weights(path) if path.is_dir() else (path,)
    if not weights:
        raise ModelNotAvailable(
            f"no weights in {path}: expected model.safetensors (or its index), ckpt.safetensors or ckpt.pt"
        )
    config = directory / "config.json"
    tokenizer = directory / "tokenizer.json"
    return ModelFiles(weights, config if config.exists() else None, tokenizer if tokenizer.exists() else None)


def _hub_files(repo_id: str) -> ModelFiles:
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", "ckpt.pt"]
    errors = []
    for local_only in (True, False):
        try:
            snapshot = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_only))
            return _local_files(snapshot)
        except Exception as exc:  # noqa: BLE001 - the hub raises many kinds; report them all
            errors.append(f"{'cache' if local_only else 'hub'}: {type(exc).__name__}: {exc}")
    raise ModelNotAvailable(
        f"model '{repo_id}' is not in the Hugging Face cache and the hub could not be reached. "
        f"Needed: {', '.join(HUB_WEIGHT_FILES)}. Set HF_TOKEN for the gated repo, or pass a local "
        f"directory with --model. ({'; '.join(errors)})"
    )


def resolve_model_files(model: str) -> ModelFiles:
    path = Path(model).expanduser()
    if path.exists():
        return _local_files(path)
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return _hub_files(model)
    raise ModelNotAvailable(f"'{model}' is neither an existing path nor a hub id (owner/name)")


def load_tokenizer(files: ModelFiles) -> TextTokenizer:
    if files.tokenizer_json is not None:
        return Llama3Tokenizer(files.tokenizer_json)
    from huggingface_hub import hf_hub_download

    try:
        return Llama3Tokenizer(Path(hf_hub_download(FALLBACK_TOKENIZER_REPO, "tokenizer.json")))
    except Exception as exc:
        raise ModelNotAvailable(
            f"no tokenizer.json beside the weights and {FALLBACK_TOKENIZER_REPO} is not reachable: {exc}"
        ) from exc


def build_tiny_random(seed: int = 0, cfg: CsmConfig = TINY) -> CSM:
    """The test-size CSM with seeded random weights (its audio is noise)."""
    gen = torch.Generator().manual_seed(seed)
    model = CSM(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5 / param.shape[-1] ** 0.5 * 4)
    return model


def load_checkpoint(files: ModelFiles, cfg: CsmConfig | None = None) -> CSM:
    """Build the model from ``files``: config from config.json unless given, both namings."""
    if cfg is None:
        cfg = config_from_json(files.config_json) if files.config_json else CSM_1B
    return model_from_state_dict(read_state_dict(files.weights), cfg)


def model_from_state_dict(state: dict[str, torch.Tensor], cfg: CsmConfig) -> CSM:
    """A CSM whose parameters are the given tensors (either naming; no copy where dtypes agree)."""
    mapped, unexpected = to_internal_names(state, cfg)
    with torch.device("meta"):
        model = CSM(cfg)
    validate(mapped, model.state_dict())
    if unexpected:
        log.warning("ignoring %d unexpected checkpoint tensor(s): %s", len(unexpected), ", ".join(unexpected[:8]))
    mapped = {k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}
    try:
        model.load_state_dict(mapped, strict=True, assign=True)
    except RuntimeError as exc:  # validate() should have caught it; keep the message precise anyway
        raise CheckpointError(str(exc)) from exc
    model.init_buffers("cpu")
    return model


def load_model(model_name: str, seed: int = 0) -> tuple[CSM, TextTokenizer]:
    """The model and its tokenizer, on CPU in float32 (the caller moves and casts)."""
    if model_name == TINY_RANDOM:
        log.warning("model 'tiny-random': random weights, test size -- its audio is NOISE, not speech")
        return build_tiny_random(seed), ByteTokenizer()
    files = resolve_model_files(model_name)
    model = load_checkpoint(files)
    return model, load_tokenizer(files)
