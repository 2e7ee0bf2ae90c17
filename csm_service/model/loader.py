"""Where a checkpoint comes from: a hub id (cache first) or a local directory or file; and the
test-size model with random weights (``tiny-random``, see :mod:`csm_service.model.registry`).

Nothing here downloads anything unless the hub is reachable; an unreachable hub with an empty
cache gives :class:`ModelNotAvailable` naming the files it needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from csm_service.config import CSM_1B, TINY, CsmConfig
from csm_service.model.checkpoint import (
    CheckpointError,
    config_from_json,
    read_state_dict,
    to_internal_names,
    validate,
)
from csm_service.model.csm import CSM
from csm_service.model.tokenizer import Llama3Tokenizer, TextTokenizer

log = logging.getLogger(__name__)

# The ungated copy of the Llama-3.2 tokenizer used when a checkpoint ships none.
FALLBACK_TOKENIZER_REPO = "unsloth/Llama-3.2-1B"
HUB_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "ckpt.pt", "config.json", "tokenizer.json")
TORCH_WEIGHT_NAMES = ("ckpt.pt", "model.pt", "pytorch_model.bin")  # in order of preference


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
    for name in ("model.safetensors", "ckpt.safetensors", *TORCH_WEIGHT_NAMES):
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


def _is_weights_safetensors(name: str) -> bool:
    """A top-level safetensors file holding model weights (not Mimi's ``tokenizer-*`` file)."""
    return "/" not in name and name.endswith(".safetensors") and not name.startswith("tokenizer-")


def hub_download_patterns(repo_files: Iterable[str]) -> list[str]:
    """What to fetch from a hub repo: its JSON files and ONE weights format, never both.

    CSM-1B's repo carries ``model.safetensors`` and Sesame's ``ckpt.pt`` (~6 GB each): the
    safetensors (shards included) when there are any, else the first torch checkpoint found.
    """
    names = [n for n in repo_files if "/" not in n]
    safetensors = sorted(n for n in names if _is_weights_safetensors(n))
    if safetensors:
        return ["*.json", *safetensors]
    return ["*.json", *[n for n in TORCH_WEIGHT_NAMES if n in names][:1]]


def _hub_files(repo_id: str) -> ModelFiles:
    from huggingface_hub import list_repo_files, snapshot_download

    cached_patterns = ["*.safetensors", "*.json", *TORCH_WEIGHT_NAMES]  # whatever the cache has; no download
    errors = []
    for local_only in (True, False):
        try:
            patterns = cached_patterns if local_only else hub_download_patterns(list_repo_files(repo_id))
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


def load_checkpoint(files: ModelFiles, cfg: CsmConfig | None = None, dtype: torch.dtype = torch.float32) -> CSM:
    """Build the model from ``files`` in ``dtype`` (each tensor cast as it is read): config from
    config.json unless given, both namings."""
    if cfg is None:
        cfg = config_from_json(files.config_json) if files.config_json else CSM_1B
    return model_from_state_dict(read_state_dict(files.weights, dtype), cfg, dtype)


def model_from_state_dict(state: dict[str, torch.Tensor], cfg: CsmConfig, dtype: torch.dtype = torch.float32) -> CSM:
    """A CSM whose parameters are the given tensors in ``dtype`` (either naming; no copy where
    dtypes agree, else one tensor at a time)."""
    mapped, unexpected = to_internal_names(state, cfg)
    with torch.device("meta"):
        model = CSM(cfg)
    validate(mapped, model.state_dict())
    if unexpected:
        log.warning("ignoring %d unexpected checkpoint tensor(s): %s", len(unexpected), ", ".join(unexpected[:8]))
    for name, tensor in mapped.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            mapped[name] = tensor.to(dtype)
    try:
        model.load_state_dict(mapped, strict=True, assign=True)
    except RuntimeError as exc:  # validate() should have caught it; keep the message precise anyway
        raise CheckpointError(str(exc)) from exc
    model.init_buffers("cpu")
    return model
