"""Loading fetches one weights format from a hub repo that has two, and casts tensor by tensor.

The hub is a fake: a local directory served through stand-ins for huggingface_hub's
``list_repo_files`` and ``snapshot_download`` that record which files were "downloaded".
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from csm_service.config import TINY
from csm_service.model.checkpoint import read_state_dict
from csm_service.model.loader import (
    ModelFiles,
    build_tiny_random,
    hub_download_patterns,
    load_checkpoint,
    resolve_model_files,
)
from tests.unit.test_loading import sesame_named

CONFIG = '{"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M"}'


class FakeHub:
    def __init__(self, remote: Path, cache: Path) -> None:
        self.remote, self.cache = remote, cache
        self.downloaded: list[str] = []
        self.listed = 0

    def list_repo_files(self, repo_id: str, **_: object) -> list[str]:
        self.listed += 1
        return sorted(p.name for p in self.remote.iterdir())

    def snapshot_download(self, repo_id: str, allow_patterns: list[str], local_files_only: bool = False, **_: object):
        if local_files_only:
            if not self.cache.exists():
                raise FileNotFoundError("not in the cache")
            return str(self.cache)
        self.cache.mkdir(exist_ok=True)
        for path in sorted(self.remote.iterdir()):
            if any(fnmatch.fnmatch(path.name, pattern) for pattern in allow_patterns):
                shutil.copy(path, self.cache / path.name)
                self.downloaded.append(path.name)
        return str(self.cache)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    hub = FakeHub(tmp_path / "remote", tmp_path / "snapshot")
    hub.remote.mkdir()
    monkeypatch.setattr(huggingface_hub, "list_repo_files", hub.list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    return hub


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return sesame_named(build_tiny_random(seed=3))


def test_a_repo_with_both_formats_gives_only_the_safetensors(fake_hub, tiny_state):
    save_file(tiny_state, str(fake_hub.remote / "model.safetensors"))
    torch.save(tiny_state, fake_hub.remote / "ckpt.pt")
    (fake_hub.remote / "config.json").write_text(CONFIG)
    (fake_hub.remote / "tokenizer-e351c8d8-checkpoint125.safetensors").write_bytes(b"mimi")  # not CSM weights
    files = resolve_model_files("owner/csm")
    assert sorted(fake_hub.downloaded) == ["config.json", "model.safetensors"]
    assert [p.name for p in files.weights] == ["model.safetensors"]
    model = load_checkpoint(files, cfg=TINY)
    assert torch.equal(model.audio_head, build_tiny_random(seed=3).audio_head)
    # the second time it comes from the cache: nothing listed, nothing downloaded
    fake_hub.downloaded.clear()
    assert resolve_model_files("owner/csm").weights == files.weights
    assert fake_hub.downloaded == [] and fake_hub.listed == 1


def test_a_repo_with_only_ckpt_pt_gives_it(fake_hub, tiny_state):
    torch.save(tiny_state, fake_hub.remote / "ckpt.pt")
    torch.save(tiny_state, fake_hub.remote / "pytorch_model.bin")  # a second torch file: not fetched
    files = resolve_model_files("owner/csm")
    assert fake_hub.downloaded == ["ckpt.pt"] and [p.name for p in files.weights] == ["ckpt.pt"]


def test_download_patterns():
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    repo = [*shards, "model.safetensors.index.json", "ckpt.pt", "config.json", "tokenizer-x.safetensors", "a/b.pt"]
    assert hub_download_patterns(repo) == ["*.json", *shards]
    assert hub_download_patterns(["ckpt.pt", "model.pt", "config.json"]) == ["*.json", "ckpt.pt"]
    assert hub_download_patterns(["config.json", "sub/model.safetensors"]) == ["*.json"]


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("filename", ["model.safetensors", "ckpt.pt"])
def test_per_tensor_cast_gives_the_weights_of_the_old_whole_model_cast(tmp_path, tiny_state, stored, filename):
    state = {k: v.to(stored) for k, v in tiny_state.items()}
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    files = ModelFiles((path,), None, None)
    before = load_checkpoint(files, cfg=TINY).to(torch.bfloat16).state_dict()  # fp32 model, then cast whole
    after = load_checkpoint(files, cfg=TINY, dtype=torch.bfloat16).state_dict()  # cast while reading
    assert before.keys() == after.keys()
    for name, tensor in after.items():
        assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name
    params = dict(load_checkpoint(files, cfg=TINY, dtype=torch.bfloat16).named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}


def test_read_state_dict_casts_each_tensor_and_reads_legacy_files(tmp_path, tiny_state):
    legacy = tmp_path / "ckpt.pt"
    torch.save(tiny_state, legacy, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    state = read_state_dict([legacy], torch.bfloat16)
    assert state.keys() == tiny_state.keys()
    for name, tensor in state.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, tiny_state[name].to(torch.bfloat16)), name
