"""Checkpoint loading: formats, namings, and precise errors."""

from __future__ import annotations

import json
import subprocess
import sys
import wave

import pytest
import torch
from safetensors.torch import save_file

from csm_service.config import TINY
from csm_service.model.checkpoint import CheckpointError
from csm_service.model.loader import (
    ModelFiles,
    ModelNotAvailable,
    build_tiny_random,
    load_checkpoint,
    resolve_model_files,
)
from csm_service.model.tokenizer import ByteTokenizer, Llama3Tokenizer
from tests.hf_reference import halves_to_interleaved


def sesame_named(model) -> dict[str, torch.Tensor]:
    """Our tiny model's weights written under Sesame's names (interleaved q/k)."""
    out = {}
    for name, t in model.state_dict().items():
        if name in ("codebook_offsets",) or "rope_" in name or ".caches." in name:
            continue
        n = (
            name.replace("attn.o_proj", "attn.output_proj")
            .replace("mlp.gate_proj", "mlp.w1")
            .replace("mlp.down_proj", "mlp.w2")
            .replace("mlp.up_proj", "mlp.w3")
            .replace("attn_norm.weight", "sa_norm.scale")
            .replace("mlp_norm.weight", "mlp_norm.scale")
            .replace("norm.weight", "norm.scale")
        )
        if name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            stack = TINY.backbone if name.startswith("backbone") else TINY.decoder
            heads = stack.num_heads if ".q_proj" in name else stack.num_kv_heads
            t = halves_to_interleaved(t, heads)
        out[n] = t.contiguous()
    return out


@pytest.fixture(scope="module")
def tiny_state():
    return sesame_named(build_tiny_random(seed=3))


@pytest.mark.parametrize("filename", ["model.safetensors", "ckpt.pt"])
def test_local_directory_in_both_formats(tmp_path, tiny_state, filename):
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(tiny_state, str(path))
    else:
        torch.save(tiny_state, path)
    files = resolve_model_files(str(tmp_path))
    assert files.weights == (path,)
    model = load_checkpoint(files, cfg=TINY)
    reference = build_tiny_random(seed=3).state_dict()
    for name, t in model.state_dict().items():
        assert torch.equal(t, reference[name]), name


def test_missing_tensor_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["decoder.layers.1.mlp.w2.weight"]
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.1\.mlp\.down_proj\.weight"):
        load_checkpoint(ModelFiles((tmp_path / "ckpt.pt",), None, None), cfg=TINY)


def test_misshaped_tensor_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["codebook0_head.weight"] = torch.zeros(7, 3)
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"codebook0_head\.weight.*\(7, 3\).*expected \(2051, 128\)"):
        load_checkpoint(ModelFiles((tmp_path / "ckpt.pt",), None, None), cfg=TINY)


def test_not_a_csm_checkpoint(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not a CSM checkpoint"):
        load_checkpoint(ModelFiles((tmp_path / "ckpt.pt",), None, None), cfg=TINY)


def test_offline_hub_names_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailable) as err:
        resolve_model_files("sesame/csm-1b")
    assert "sesame/csm-1b" in str(err.value) and "model.safetensors" in str(err.value)


def test_empty_directory_and_bad_name(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no weights"):
        resolve_model_files(str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="neither an existing path nor a hub id"):
        resolve_model_files("./does/not/exist")


def test_sesame_config_json(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "backbone_flavor": "llama-1B",
                "decoder_flavor": "llama-100M",
                "text_vocab_size": 128256,
                "audio_vocab_size": 2051,
                "audio_num_codebooks": 32,
            }
        )
    )
    from csm_service.model.checkpoint import config_from_json

    cfg = config_from_json(tmp_path / "config.json")
    assert cfg.backbone.num_layers == 16 and cfg.decoder.dim == 1024


def test_tokenizers():
    assert ByteTokenizer().encode("[0]hé") == [256, 91, 48, 93, 104, 195, 169, 257]


def test_llama3_tokenizer_adds_bos_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[0]hi": 5, "[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    ids = Llama3Tokenizer(tmp_path / "tokenizer.json").encode("[0]hi")
    assert ids[0] == 128000 and ids[-1] == 128001 and len(ids) > 2


def test_say_writes_a_24khz_mono_wav(tmp_path):
    out = tmp_path / "x.wav"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "csm_service.cli",
            "say",
            "hello",
            "-o",
            str(out),
            "--model",
            "tiny-random",
            "--max-audio-length-ms",
            "400",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert w.getnframes() == 5 * 1920


def test_fetch_offline_names_the_repo(tmp_path, monkeypatch, capsys):
    from csm_service.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["fetch", "--model", "sesame/csm-1b"]) == 1
    assert "sesame/csm-1b" in capsys.readouterr().err


def test_fetch_a_local_directory_lists_its_files(tmp_path, tiny_state, capsys):
    from tokenizers import Tokenizer, models

    from csm_service.cli import main

    save_file(tiny_state, str(tmp_path / "model.safetensors"))
    Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer-e351c8d8-checkpoint125.safetensors").write_bytes(b"")  # Mimi, by its name
    assert main(["fetch", "--model", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.split()
    assert str(tmp_path / "model.safetensors") in listed and str(tmp_path / "tokenizer.json") in listed
    assert str(tmp_path / "tokenizer-e351c8d8-checkpoint125.safetensors") in listed
