"""Connection-level denial of service (issue 16, findings 2, 4, 5 and 11), on real servers.

- Sockets that have not authenticated have their own budget (--max-unauthenticated-sessions):
  keyless ones cannot lock keyed clients or Twilio calls out of --max-sessions.
- A Twilio stream keeps nothing before ``start`` but a few DTMF digits, and reads at most
  --twilio-prestart-bytes before it; early DTMF is recorded, never a barge-in on the greeting.
- Slowloris: request headers and bodies have deadlines (--http-header-timeout-s,
  --http-body-timeout-s); past --max-connections idle connections make room, busy ones leave the
  health reserve (--health-reserve-connections), and the cap fits the file-descriptor limit.
- Closing a session cancels and collects every task it made, even when the handler is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from csm_service.edge.state import STATE
from csm_service.tools.twilio_sim import TwilioSimulator
from tests.integration.servers import (
    ROOT,
    Process,
    async_wait_until,
    free_port,
    http_status,
    start_serve,
    wait_until,
)

KEY = "conn-key"
PUSHED_OUT = "too many unauthenticated connections: authenticate at once (a key at the upgrade)"
NO_ENGINE = "127.0.0.1:1"  # the edge alone: nothing here needs synthesis, and /ping answers 204


# -- helpers: raw sockets and the server's own counters -------------------------------------------
def raw(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def until_closed(sock: socket.socket, timeout_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection; socket.timeout if it never does."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    """One keep-alive GET on ``sock`` -> (status, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before answering {path}: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    while length and len(body) < int(length.group(1)):
        body += sock.recv(65536)
    return int(head.split()[1]), body


def connection_outcomes(port: int) -> dict[str, float]:
    """csm_edge_requests_total{endpoint="connection"} by outcome."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    pattern = r'csm_edge_requests_total\{endpoint="connection",outcome="(\w+)"\} ([\d.e+]+)'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text)}


def vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def edge(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[Process, int]:
    """``csm-service edge`` with no engine behind it, listening (``/ping`` answers 204)."""
    port = free_port()
    args = ["edge", "--engine", NO_ENGINE, "--host", "127.0.0.1", "--port", str(port)]
    proc = Process(
        [*args, "--data-dir", str(tmp_path / f"data-{port}"), *flags], tmp_path / f"edge-{port}.log", env=env
    )
    try:
        wait_until(lambda: http_status(port, "/ping") == 204, 60, "edge listening")
    except TimeoutError:
        print(proc.log())
        proc.stop()
        raise
    return proc, port


@pytest.fixture
def procs():
    """Processes a test started: stopped (their log printed) when it ends."""
    started: list[Process] = []
    yield started
    for proc in started:
        print(proc.log()[-3000:])
        proc.stop()


# -- finding 11: cleanup survives the handler being cancelled --------------------------------------
@pytest.mark.parametrize("idle_s", [300.0, 0.0])  # 0: no idle watch, so a left-over sender is garbage at once
async def test_clean_closes_leave_no_pending_tasks(tmp_path, idle_s):
    """500 WebSocket sessions and 100 Twilio streams opened and closed cleanly: every task they made
    is cancelled and finished (the loop's tasks come back to what they were), none is destroyed
    pending ("Task was destroyed but it is pending") when the sessions are collected."""
    from prometheus_client import CollectorRegistry

    from csm_service.config import ServiceConfig
    from csm_service.edge.app import EdgeServer, build_app
    from csm_service.rpc.client import EngineClient

    loop = asyncio.get_running_loop()
    complaints: list[str] = []
    loop.set_exception_handler(lambda _loop, context: complaints.append(context["message"]))
    client = EngineClient(NO_ENGINE)
    cfg = ServiceConfig(data_dir=str(tmp_path), ws_idle_timeout_s=idle_s)
    app = build_app(cfg, client, CollectorRegistry())
    server = EdgeServer(app, "127.0.0.1", 0)

    async def serving(wait_s: float) -> bool:  # calls go on as if an engine served (none is needed here)
        return True

    app[STATE].backend.wait_until_serving = serving
    await server.start()
    base = f"ws://127.0.0.1:{server.runner.addresses[0][1]}"
    try:
        baseline = len(asyncio.all_tasks())

        async def session(http: aiohttp.ClientSession, i: int) -> None:
            async with http.ws_connect(f"{base}/v1/native/ws/s{i}") as ws:
                await ws.send_json({"type": "ping"})
                assert (await ws.receive_json(timeout=30)) == {"type": "pong"}
            assert ws.close_code == 1000  # closed cleanly, by the client

        async def call(http: aiohttp.ClientSession, i: int) -> None:
            sid = f"MZ{i:032d}"
            async with http.ws_connect(f"{base}/v1/twilio/media-stream") as ws:
                await ws.send_str(_connected())
                await ws.send_str(_start(sid))
                while sid not in app[STATE].calls:
                    await asyncio.sleep(0.01)

        async with aiohttp.ClientSession() as http:
            for batch in range(10):
                await asyncio.gather(*(session(http, batch * 50 + i) for i in range(50)))
            for batch in range(2):
                await asyncio.gather(*(call(http, batch * 50 + i) for i in range(50)))

        deadline = time.monotonic() + 30
        while len(asyncio.all_tasks()) > baseline and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(asyncio.all_tasks()) <= baseline, asyncio.all_tasks()
        gc.collect()  # a pending task left behind is destroyed (and complained about) with its session
        await asyncio.sleep(0)
        assert not [c for c in complaints if "destroyed but it is pending" in c], complaints[:3]
    finally:
        loop.set_exception_handler(None)
        await server.stop()
        await client.close()


# -- finding 2: unauthenticated sockets have their own budget --------------------------------------
BUDGET = 4  # --max-unauthenticated-sessions
SESSIONS = 3  # --max-sessions


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    flags = ["--max-sessions", str(SESSIONS), "--max-unauthenticated-sessions", str(BUDGET)]
    flags += ["--ws-auth-timeout-s", "120"]  # keyless sockets stay as long as the test: only the budget moves them
    proc, port = start_serve(tmp_path_factory.mktemp("keyed"), *flags, env={"CSM_API_KEYS": KEY})
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 120, "keyed serve healthy")
        yield port
    finally:
        print(proc.log()[-3000:])
        proc.stop()


async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """Wait for the server's close frame on ``ws`` -> (its code, its reason)."""
    msg = await ws.receive(timeout=30)
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return msg.data, msg.extra or ""


async def test_keyless_sockets_cannot_lock_out_keyed_clients_or_calls(keyed):
    """Keyless native sockets (far past --max-sessions) and Twilio streams that never start: each
    newcomer past their budget pushes out the longest-waiting one (1013). A keyed session, a keyed
    Twilio call and keyless sockets that authenticate at once still get in, up to --max-sessions."""
    native, twilio = f"ws://127.0.0.1:{keyed}/v1/native/ws/", f"ws://127.0.0.1:{keyed}/v1/twilio/media-stream"
    async with aiohttp.ClientSession() as http:
        keyless = [await http.ws_connect(native + f"anon-{i}") for i in range(3 * BUDGET)]
        silent = [await http.ws_connect(twilio) for _ in range(BUDGET)]
        for ws in silent:
            await ws.send_str(_connected())

        async with http.ws_connect(native + "keyed", headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send_json({"type": "synthesize", "text": "still room", "max_audio_length_ms": 160})
            reply = await ws.receive(timeout=60)
            assert reply.type == aiohttp.WSMsgType.TEXT, (reply, ws.close_code)  # not closed: 1013
            assert json.loads(reply.data)["type"] == "audio"
        custom = {"api_key": KEY, "greeting": "Hello there.", "max_audio_length_ms": "800", "raw_text": "true"}
        async with TwilioSimulator(twilio, "MZ" + "c" * 32, custom) as call:
            await async_wait_until(lambda: "utt_1" in call.echoed, 60, "the keyed call's greeting played")
            for ws in [*keyless, silent[0]]:  # all pushed out: the silent calls, then the call itself
                assert await _closed_with(ws) == (1013, PUSHED_OUT)

            # The budget exactly: 3 silent streams wait, one place is free; a 5th pushes out the oldest.
            late = [await http.ws_connect(native + f"late-{i}") for i in range(2)]
            assert await _closed_with(silent[1]) == (1013, PUSHED_OUT)
            for ws in late:  # both still there: they authenticate and join (2 + the call = max-sessions)
                await ws.send_json({"type": "auth", "api_key": KEY})
                assert await ws.receive_json(timeout=30) == {"type": "authenticated"}
            async with http.ws_connect(native + "one-more", headers={"Authorization": f"Bearer {KEY}"}) as ws:
                assert (await _closed_with(ws))[0] == 1013  # --max-sessions still holds for keyed ones
        for ws in [*late, *silent]:
            await ws.close()


# -- finding 4: nothing kept before a Twilio start, and a bounded read --------------------------------
def _connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def _start(sid: str, **custom: str) -> str:
    return json.dumps({"event": "start", "start": {"streamSid": sid, "customParameters": custom}})


async def _flood(url: str, message: str, count: int) -> tuple[int | str, int]:
    """Open a stream and send ``message`` ``count`` times before any start -> (how it ended: the
    server's close code, "reset" when the close frame was lost to a reset (the server closed with
    our flood unread), or "open"; how many were sent)."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str(_connected())
        closing = asyncio.create_task(ws.receive())
        sent = 0
        while sent < count and not closing.done():
            try:
                await ws.send_str(message)
            except (ConnectionError, aiohttp.ClientError):
                break
            sent += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closing), 30)
        if not closing.done():  # never closed (the old code read and kept it all)
            closing.cancel()
            return "open", sent
        msg = closing.result()
        return (msg.data if msg.type == aiohttp.WSMsgType.CLOSE else "reset"), sent


async def test_a_flood_before_start_is_cut_and_not_kept(tmp_path, procs):
    """A keyless stream that sends 300 MB of media before its start: it is closed once it has
    sent --twilio-prestart-bytes (64 KiB), and the edge's peak memory barely moves."""
    proc, port = edge(tmp_path, "--ws-auth-timeout-s", "120", env={"CSM_API_KEYS": KEY})
    procs.append(proc)
    media = json.dumps({"event": "media", "media": {"payload": "A" * 60_000}})
    before = vm_hwm_kib(proc.proc.pid)
    code, sent = await _flood(f"ws://127.0.0.1:{port}/v1/twilio/media-stream", media, 5000)
    grown_mb = (vm_hwm_kib(proc.proc.pid) - before) / 1024
    print(f"prestart flood: sent {sent} x 60 KB, closed {code}, VmHWM {before / 1024:.0f} MB +{grown_mb:.1f} MB")
    # The server closed the stream (the old code never did). How many messages the client had queued
    # by then is not the server's doing: aiohttp's client buffers sends without waiting for the
    # socket, so on a busy machine all 5000 may be queued before the close is read.
    assert code in (1008, "reset")
    assert grown_mb < 50


async def test_prestart_bytes_bound_is_exact(tmp_path, procs):
    """Up to --twilio-prestart-bytes (the start included) the call starts; one byte more closes it."""
    budget = 2000
    proc, port = edge(tmp_path, "--twilio-prestart-bytes", str(budget), env={"CSM_API_KEYS": KEY})
    procs.append(proc)
    url = f"ws://127.0.0.1:{port}/v1/twilio/media-stream"
    for extra, connects in ((0, True), (1, False)):
        sid = f"MZ{extra:032d}"
        start = _start(sid, api_key=KEY)
        skeleton = json.dumps({"event": "connected", "protocol": ""})  # a second connected, padded
        filler = json.dumps({"event": "connected", "protocol": "x" * (budget - 2 * len(skeleton) - len(start) + extra)})
        # sent before the call starts: skeleton + filler + start = budget + extra bytes
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            for text in (skeleton, filler, start):
                await ws.send_str(text)
            if connects:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/calls/{sid}", headers={"Authorization": f"Bearer {KEY}"}
                )
                await async_wait_until(
                    lambda r=request: urllib.request.urlopen(r, timeout=5).status == 200, 30, "call listed"
                )
            else:
                assert await _closed_with(ws) == (1008, "too much data before the start event")


class EarlyDtmf(TwilioSimulator):
    """A stream whose caller presses keys before Twilio's ``start`` reaches the server."""

    early = "0123456789*#0123456789"  # 22: more than are kept

    async def _send(self, message: dict) -> None:
        if message.get("event") == "start":
            for digit in self.early:
                await super()._send({"event": "dtmf", "streamSid": self.stream_sid, "dtmf": {"digit": digit}})
        await super()._send(message)


async def test_early_dtmf_is_recorded_and_does_not_cut_the_greeting(served):
    sid = "MZ" + "d" * 32
    url = f"ws://127.0.0.1:{served.port}/v1/twilio/media-stream"
    custom = {
        "greeting": "Welcome to the test line.",
        "barge_in": "dtmf",
        "max_audio_length_ms": "800",
        "raw_text": "true",
    }

    def greeting_status() -> str | None:
        state = json.loads(urllib.request.urlopen(f"{served.url}/v1/calls/{sid}", timeout=5).read())
        status = state["utterances"][0]["status"] if state["utterances"] else None
        return status if status in ("played", "interrupted", "cleared", "failed") else None

    async with EarlyDtmf(url, sid, custom) as twilio:
        assert await async_wait_until(greeting_status, 60, "the greeting finished") == "played"
        state = json.loads(urllib.request.urlopen(f"{served.url}/v1/calls/{sid}", timeout=5).read())
        assert state["dtmf"] == EarlyDtmf.early[:16]  # MAX_EARLY_DTMF kept, in order
        assert not [r for r in twilio.log if r.event == "clear"]


# -- finding 5: slowloris -------------------------------------------------------------------------
PARTIAL = b"GET /ping HTTP/1.1\r\nHost: test\r\n"  # no blank line: the headers never end


def test_partial_headers_are_dropped_at_the_header_deadline(tmp_path, procs):
    """Connections whose headers never end (silent, or trickling a header line at a time) are
    closed at --http-header-timeout-s; a kept-alive idle connection is not."""
    proc, port = edge(tmp_path, "--http-header-timeout-s", "1")
    procs.append(proc)
    kept_alive = raw(port)
    assert get(kept_alive, "/ping")[0] == 204
    partial = [raw(port, PARTIAL) for _ in range(50)]
    trickler = raw(port, b"GET /ping HTTP/1.1\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):
            try:
                trickler.sendall(b"X-Slow: yes\r\n")
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        for sock in [*partial, trickler]:
            assert until_closed(sock) == b""  # closed by the server, unanswered
        assert get(kept_alive, "/ping")[0] == 204  # idle longer than the header deadline, still served
        assert connection_outcomes(port)["header_timeout"] == 51
    finally:
        stop.set()
        for sock in [*partial, trickler, kept_alive]:
            sock.close()


def test_a_trickling_body_gets_408_at_the_body_deadline(tmp_path, procs):
    proc, port = edge(tmp_path, "--http-body-timeout-s", "1")
    procs.append(proc)
    head = b"POST /synthesize HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    sock = raw(port, head)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):
            try:
                sock.sendall(b" ")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        answer = until_closed(sock)
    finally:
        stop.set()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "Request Timeout" and "within 1 s" in body["detail"], body
    with raw(port, head[:-1].replace(b"1000", b"5") + b"{nope") as quick:  # a body in time is read as before
        assert until_closed_or_answered(quick).startswith(b"HTTP/1.1 400 ")
    assert connection_outcomes(port)["body_timeout"] == 1


def until_closed_or_answered(sock: socket.socket) -> bytes:
    """The start of the server's answer (at least its status line)."""
    sock.settimeout(30)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_at_the_cap_idle_connections_make_room_and_busy_ones_leave_health(tmp_path, procs):
    """--max-connections 4, --health-reserve-connections 2. Idle (partial-header) connections are
    pushed out by newcomers, oldest first. With every place busy (WebSocket sessions), a newcomer
    may ask only for /health or /ping (anything else: 503); without a reserve it gets 503 at once."""
    proc, port = edge(tmp_path, "--max-connections", "4", "--health-reserve-connections", "2")
    procs.append(proc)
    idle = [raw(port, PARTIAL) for _ in range(4)]  # the cap, full of slowloris
    with raw(port) as newcomer:
        assert get(newcomer, "/ping")[0] == 204  # got in
    await async_wait_until(lambda: is_closed(idle[0]), 30, "the oldest idle connection pushed out")
    async with aiohttp.ClientSession() as http:
        sessions = [await http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/busy-{i}") for i in range(4)]
        for ws in sessions:  # each answers: it holds a place
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=30) == {"type": "pong"}
        await async_wait_until(lambda: all(is_closed(s) for s in idle), 30, "every idle one pushed out")
        with raw(port) as extra:
            status, body = get(extra, "/v1/voices")
            assert status == 503 and b"Too many connections" in body, body
            assert until_closed(extra) == b""  # a place of the reserve is given back after one answer
        with raw(port) as probe:
            assert get(probe, "/health")[0] in (200, 503)  # answered (503: no engine behind this edge)
        squatters = [raw(port, PARTIAL) for _ in range(2)]  # the reserve, full of slowloris
        with raw(port) as probe:
            assert get(probe, "/ping")[0] == 204
        await async_wait_until(lambda: is_closed(squatters[0]), 30, "an idle reserve place given up")
        for ws in sessions:
            await ws.close()
        for sock in [*idle, *squatters]:
            sock.close()
    assert connection_outcomes(port)["pushed_out"] >= 5  # 6 if the /ping newcomer was still open


async def test_past_the_cap_with_no_reserve_a_connection_is_refused_at_once(tmp_path, procs):
    proc, port = edge(tmp_path, "--max-connections", "2", "--health-reserve-connections", "0")
    procs.append(proc)
    async with aiohttp.ClientSession() as http:
        sessions = [await http.ws_connect(f"ws://127.0.0.1:{port}/v1/native/ws/busy-{i}") for i in range(2)]
        for ws in sessions:
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=30) == {"type": "pong"}
        with raw(port) as refused:
            answer = until_closed(refused)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        for ws in sessions:
            await ws.close()
    await async_wait_until(lambda: http_status(port, "/ping") == 204, 30, "room again")
    assert connection_outcomes(port)["refused"] >= 1


def test_partial_headers_cannot_exhaust_file_descriptors(tmp_path, procs):
    """An edge limited to 1024 file descriptors, and 1200 silent partial-header connections: /ping
    still answers (the cap is lowered to fit the limit, and the oldest idle connections make room)."""
    wrapper = tmp_path / "limited.py"
    wrapper.write_text(
        "import resource, runpy, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))\n"
        "sys.argv[0] = 'csm-service'\n"
        "runpy.run_module('csm_service.cli', run_name='__main__')\n"
    )
    port = free_port()
    args = ["edge", "--engine", NO_ENGINE, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--data-dir", str(tmp_path / "data"), "--http-header-timeout-s", "600"]  # only the cap acts here
    proc = Process(args, tmp_path / "edge-fd.log", env={"PYTHONPATH": str(ROOT)}, script=str(wrapper))
    procs.append(proc)
    wait_until(lambda: http_status(port, "/ping") == 204, 60, "edge listening")
    partial = []
    try:
        for _ in range(1200):
            partial.append(raw(port, PARTIAL))
        with raw(port) as probe:
            probe.settimeout(10)
            assert get(probe, "/ping")[0] == 204
        assert "lowered to" in proc.log()
    finally:
        for sock in partial:
            sock.close()
