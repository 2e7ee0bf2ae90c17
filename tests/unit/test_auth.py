"""API key checks without a server."""

from __future__ import annotations

import logging

from csm_service.auth import KeyChecker, bearer_token, warn_if_open
from csm_service.config import api_keys, build_config
from csm_service.rpc.auth import grpc_metadata


def test_checker():
    checker = KeyChecker(("alpha", "beta"))
    assert checker.enabled and checker.is_valid("alpha") and checker.is_valid("beta")
    assert not any(checker.is_valid(k) for k in (None, "", "alph", "alpha ", "ALPHA", "bétä"))
    open_checker = KeyChecker(())
    assert not open_checker.enabled and open_checker.is_valid(None)


def test_bearer_token():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer") is None and bearer_token(None) is None


def test_keys_from_environment_and_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\n\nfile-key\nenv-key\n")
    cfg = build_config({}, environ={"CSM_API_KEYS": "env-key, other", "CSM_API_KEYS_FILE": str(keys_file)})
    assert api_keys(cfg) == ("env-key", "other", "file-key")
    assert grpc_metadata(api_keys(cfg)) == (("authorization", "Bearer env-key"),)
    assert api_keys(build_config({}, environ={})) == () and grpc_metadata(()) == ()


def test_warning_when_open_beyond_loopback(caplog):
    with caplog.at_level(logging.WARNING):
        warn_if_open(KeyChecker(()), "127.0.0.1", "edge")
        warn_if_open(KeyChecker(("k",)), "0.0.0.0", "edge")
        assert not caplog.records
        warn_if_open(KeyChecker(()), "0.0.0.0", "edge")
    assert "no API keys" in caplog.records[0].getMessage()
