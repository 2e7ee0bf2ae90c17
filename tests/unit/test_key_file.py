"""Tenants without a server: the API key file format, key -> principal resolution, the voice store's
owners and its migration of a database from before owners, and the in-flight leases."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from csm_service.auth import KeyChecker
from csm_service.cli import main as cli_main
from csm_service.config import api_key_entries, api_keys, build_config
from csm_service.limits import InflightLimiter
from csm_service.rpc.auth import grpc_metadata
from csm_service.rpc.server import caller_limits
from csm_service.tenants import (
    INTERNAL,
    OPEN,
    ApiKey,
    KeyFileError,
    Principal,
    default_tenant,
    merge_keys,
    parse_key_file,
)
from csm_service.voices import VoiceLimitReached, VoiceStore

KEY_FILE = """\
# operators' keys; blank lines and comments are ignored

k-plain
k-acme-1 tenant=acme
  k-acme-2   tenant=acme\tmax_inflight=64   # a comment after the fields
k-ops tenant=ops scope=admin
k-solo scope=tenant
k-hash#not-a-comment
"""


def test_the_key_file_format():
    keys = parse_key_file(KEY_FILE, "keys.txt")
    assert [k.key for k in keys] == ["k-plain", "k-acme-1", "k-acme-2", "k-ops", "k-solo", "k-hash#not-a-comment"]
    by_key = {k.key: k for k in keys}
    assert by_key["k-plain"] == ApiKey("k-plain", default_tenant("k-plain"))  # its own tenant, by a hash
    assert default_tenant("k-plain").startswith("key-") and "k-plain" not in default_tenant("k-plain")
    assert by_key["k-acme-1"].tenant == by_key["k-acme-2"].tenant == "acme"
    assert by_key["k-acme-2"].max_inflight == 64 and by_key["k-acme-1"].max_inflight is None
    assert by_key["k-ops"].admin and by_key["k-ops"].tenant == "ops"
    assert not by_key["k-solo"].admin and by_key["k-solo"].tenant == default_tenant("k-solo")
    merged = {k.key: k for k in merge_keys(keys)}
    assert merged["k-acme-1"].max_inflight == 64  # a tenant's cap holds for all its keys


def test_the_old_format_still_parses_to_the_same_keys():
    assert [k.key for k in parse_key_file("# comment\n\nfile-key\nenv-key\n", "f")] == ["file-key", "env-key"]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("s3cret-key tenant", "name=value"),
        ("s3cret-key tennant=acme", "unknown field 'tennant'"),
        ("s3cret-key scope=root", "scope must be one of tenant, admin"),
        ("s3cret-key tenant=ac/me", "tenant must be"),
        ("s3cret-key tenant=", "name=value"),
        ("s3cret-key max_inflight=-1", "max_inflight must be an integer"),
        ("s3cret-key max_inflight=ten", "max_inflight must be an integer"),
        ("s3cret-key tenant=a tenant=b", "given twice"),
        ("tenant=acme s3cret-key", "starts with the key"),
        ("s3cret key", "a key has no spaces"),
    ],
)
def test_bad_lines_name_the_file_and_line_but_never_the_key(line, needle):
    with pytest.raises(KeyFileError) as info:
        parse_key_file(f"# header\n\n{line}\n", "/etc/csm/keys")
    message = str(info.value)
    assert message.startswith("/etc/csm/keys:3: ") and needle in message
    assert "s3cret" not in message


def test_conflicting_entries_are_errors():
    with pytest.raises(KeyFileError, match="listed twice"):
        merge_keys(parse_key_file("k tenant=a\nk tenant=b\n", "f"))
    with pytest.raises(KeyFileError, match="different max_inflight"):
        merge_keys(parse_key_file("k1 tenant=a max_inflight=1\nk2 tenant=a max_inflight=2\n", "f"))
    same = merge_keys(parse_key_file("k tenant=a\nk tenant=a\nk\n", "f"))
    assert [(k.key, k.tenant) for k in same] == [("k", "a")]


def test_environment_keys_are_their_own_tenants_and_the_file_groups(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("env-key tenant=shop\nfile-key tenant=shop scope=admin\n")
    cfg = build_config({}, environ={"CSM_API_KEYS": "env-key, other", "CSM_API_KEYS_FILE": str(keys_file)})
    entries = {e.key: e for e in api_key_entries(cfg)}
    assert api_keys(cfg) == ("env-key", "other", "file-key")  # the old function: the keys alone, in order
    assert entries["other"].tenant == default_tenant("other")
    assert entries["env-key"].tenant == entries["file-key"].tenant == "shop"  # the file's fields win
    # An edge sends workers its first admin key (admins are not held to per-caller limits there).
    assert grpc_metadata(api_key_entries(cfg)) == (("authorization", "Bearer file-key"),)
    assert grpc_metadata(("a", "b")) == (("authorization", "Bearer a"),)


def test_a_bad_key_file_stops_start_up_with_a_clear_error(tmp_path, capsys):
    keys_file = tmp_path / "keys"
    keys_file.write_text("good-key\nsecret-key scope=owner\n")
    env = {"CSM_API_KEYS_FILE": str(keys_file)}
    with pytest.raises(KeyFileError):
        api_key_entries(build_config({}, environ=env))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSM_API_KEYS_FILE", str(keys_file))
        mp.setattr("logging.basicConfig", lambda **kw: None)  # leave the test run's logging alone
        code = cli_main(["edge", "--engine", "127.0.0.1:1", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and f"{keys_file}:2: scope must be one of" in err and "secret-key" not in err
    with pytest.raises(KeyFileError, match="cannot read"):
        api_key_entries(build_config({}, environ={"CSM_API_KEYS_FILE": str(tmp_path / "missing")}))


def test_the_checker_resolves_keys_to_principals():
    checker = KeyChecker(merge_keys(parse_key_file(KEY_FILE, "f")), internal=("edge-secret",))
    assert checker.resolve("k-acme-1") == checker.resolve("k-acme-2") == Principal("acme", False, 64)
    assert checker.resolve("k-ops") == Principal("ops", admin=True)
    assert checker.resolve("edge-secret") is INTERNAL
    assert all(checker.resolve(k) is None for k in (None, "", "k-acme", "k-acme-1 ", "K-OPS"))
    assert checker.is_valid("k-plain") and not checker.is_valid("nope")
    plain = KeyChecker(("alpha",))  # key strings, as before: each its own tenant
    assert plain.resolve("alpha") == Principal(default_tenant("alpha"))
    open_checker = KeyChecker((), internal=("edge-secret",))  # keys off: everyone is the one tenant
    assert not open_checker.enabled and open_checker.resolve(None) is OPEN and open_checker.resolve("x") is OPEN
    assert open_checker.resolve("edge-secret") is INTERNAL


def test_who_sees_what():
    acme, ops = Principal("acme"), Principal("ops", admin=True)
    assert acme.can_see("acme") and acme.can_see(None) and not acme.can_see("globex")
    assert ops.can_see("globex") and OPEN.can_see("globex") and INTERNAL.sees_all
    assert acme.voice_scope == "acme" and ops.voice_scope is None and OPEN.voice_scope is None


def _codes(frames: int = 3) -> np.ndarray:
    return np.arange(32 * frames).reshape(32, frames) % 2048


def test_voice_owners_scopes_and_the_count_limit(tmp_path):
    store = VoiceStore(tmp_path)
    a1 = store.create("Front Desk", "hi", _codes(), 0, "", 240.0, owner="acme", max_per_owner=2)
    store.create("front desk", "hi", _codes(), 0, "", 240.0, owner="acme", max_per_owner=2)
    with pytest.raises(VoiceLimitReached):
        store.create("third", "hi", _codes(), 0, "", 240.0, owner="acme", max_per_owner=2)
    b1 = store.create("Front Desk", "hi", _codes(), 0, "", 240.0, owner="globex", max_per_owner=2)
    shared = store.create("Lobby", "hi", _codes(), 0, "", 240.0, owner=None)
    assert store.count("acme") == 2 and store.count(None) == 1
    assert store.get(b1.voice_id, "acme") is None and store.get(b1.voice_id, None).owner == "globex"
    assert store.get(shared.voice_id, "acme") is not None  # shared: everyone may use it
    assert {v.voice_id for v in store.list("globex")} == {b1.voice_id, shared.voice_id}
    assert len(store.find_by_name("FRONT DESK", "acme")) == 2 and store.find_by_name("front desk", "globex") == [
        b1.voice_id
    ]
    assert not store.delete(b1.voice_id, "acme") and not store.delete(shared.voice_id, "acme")
    assert store.delete(a1.voice_id, "acme") and store.delete(shared.voice_id, None)
    store.close()


def test_pages_walk_every_voice_once(tmp_path):
    store = VoiceStore(tmp_path)
    made = [store.create(f"v{i}", "t", _codes(1), 0, "", 80.0, owner="acme").voice_id for i in range(7)]
    seen, after = [], None
    while True:
        page = store.page("acme", 3, after)
        seen += [v.voice_id for v in page]
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].voice_id)
    assert seen == [v.voice_id for v in store.list("acme")] and sorted(seen) == sorted(made)
    store.close()


OLD_SCHEMA = """
CREATE TABLE voices (
    voice_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    speaker INTEGER NOT NULL, transcript TEXT NOT NULL, codes BLOB NOT NULL,
    num_frames INTEGER NOT NULL, duration_ms REAL NOT NULL, created_at REAL NOT NULL
)
"""


def test_a_database_from_before_owners_is_migrated_and_its_voices_are_shared(tmp_path):
    db = sqlite3.connect(tmp_path / "voices.sqlite3")
    db.execute(OLD_SCHEMA)
    blob = np.ascontiguousarray(_codes(2), dtype="<u2").tobytes()
    db.execute(
        "INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", ("voice_old", "Ärzte", "", 1, "t", blob, 2, 160.0, 1.0)
    )
    db.commit()
    db.close()
    store = VoiceStore(tmp_path)
    old = store.get("voice_old", "acme")
    assert old is not None and old.owner is None and old.summary()["shared"]
    np.testing.assert_array_equal(old.codes, _codes(2))
    assert store.find_by_name("ärzte", "acme") == ["voice_old"]  # the name index was filled in
    assert not store.delete("voice_old", "acme")  # only an admin (scope None) deletes a shared voice
    store.close()
    VoiceStore(tmp_path).close()  # opening a migrated database again changes nothing


def test_inflight_leases_release_once():
    limiter = InflightLimiter(2)
    first, second = limiter.try_acquire("tenant:a"), limiter.try_acquire("tenant:a")
    assert first and second and limiter.try_acquire("tenant:a") is None
    assert limiter.try_acquire("tenant:b") is not None  # another client is not affected
    first.release()
    first.release()  # idempotent: a done callback and a finally may both release
    assert limiter.in_flight("tenant:a") == 1
    with limiter.try_acquire("tenant:a", limit=5):
        assert limiter.in_flight("tenant:a") == 2
    second.release()
    assert limiter.in_flight("tenant:a") == 0 and "tenant:a" not in limiter._counts


def test_grpc_caller_limits_from_the_configuration():
    cfg = build_config({})
    assert caller_limits(cfg).max_inflight == cfg.engine.max_batch + cfg.engine.max_queue // 2 == 40
    assert caller_limits(build_config({"grpc_max_inflight_per_key": 0})).max_inflight == 0
    assert caller_limits(build_config({"grpc_max_inflight_per_key": 3, "rate_limit_per_s": 2.0})).rate_per_s == 2.0
