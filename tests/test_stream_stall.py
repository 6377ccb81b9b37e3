"""Issue 13 row 12: an HTTP stream that stalls mid-way is a SourceError saying so (non-zero exit), not the end of the
video; ``reconnect`` retries. A local server on 127.0.0.1 sends half of an MPEG-TS file, then stalls (bounded: it
gives up by itself after 20 s)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from videos import write_video

from runtime.cli import main
from runtime.video_io import SourceError

pytestmark = pytest.mark.slow


class _Server:
    """Serves ``data``; ``stall`` sends only the first half, then waits (at most 20 s) before closing."""

    def __init__(self, data: bytes, stall: bool):
        self.data, self.stall, self.requests = data, stall, 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 -- http.server's name
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(outer.data)))
                self.end_headers()
                body = outer.data[: len(outer.data) // 2] if outer.stall else outer.data
                self.wfile.write(body)
                self.wfile.flush()
                if outer.stall:
                    outer.release.wait(20)

            def log_message(self, *args):
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/live.ts"

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ts_bytes(tmp_path_factory) -> bytes:
    path = write_video(tmp_path_factory.mktemp("ts") / "clip.ts", 120, fps=30, size=(48, 64), fmt="mpegts")
    return path.read_bytes()


def test_a_stalled_stream_is_a_source_error(pipe, ts_bytes):
    t0 = time.perf_counter()
    good = 0
    with _Server(ts_bytes, stall=True) as url:
        stream = pipe.stream(url, "What is it?", cadence=0, max_new_tokens=2, stall_timeout=1.5)
        with pytest.raises(SourceError, match=r"stream .* stalled: no data for 1.5 s after frame \d+"):
            for r in stream:
                good += r.ok
    assert 10 < good < 120 and time.perf_counter() - t0 < 30


def test_reconnect_then_fail_and_the_cli_exit_code(export_dir, ts_bytes, capsys):
    server = _Server(ts_bytes, stall=True)
    with server as url:
        rc = main(["stream", str(export_dir), "--source", url, "--prompt", "What is it?", "--cadence", "0",
                   "--max-new-tokens", "2", "--stall-timeout", "1", "--reconnect", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "stalled" in err and "after 1 reconnect" in err, err
    assert server.requests == 2  # the first connection and one reconnect


def test_a_stream_that_ends_is_not_a_stall(pipe, ts_bytes):
    with _Server(ts_bytes, stall=False) as url:
        results = list(pipe.stream(url, "What is it?", cadence=0, max_new_tokens=2, stall_timeout=1.5))
    assert len(results) == 120 and all(r.ok for r in results)
    assert results[1].timestamp == pytest.approx(1 / 30, abs=2e-3)
