"""The runtime opens no network socket (issue #13): a full `Runtime.stream` on a recorded clip
with a persistent speaker cache, and `mlsan-edge run` and `speakers`, run in a child process
whose audit hook records every socket event (creation, connect, bind, DNS lookup) and fails;
at the end no open file descriptor may be a socket (what C libraries would open unseen by the hook)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "speech_ravdess_a01.flac"

CHILD = textwrap.dedent('''
    import sys
    seen = []

    def hook(event, args):
        if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
            seen.append(event)
            raise RuntimeError(f"network use: {event} {args!r:.200}")

    sys.addaudithook(hook)  # from here on every socket the process opens is seen (and refused)
    from mlsan_edge.runtime import load_runtime
    from mlsan_edge import cli

    with load_runtime("default", cache=sys.argv[2]) as rt:
        events = list(rt.stream(audio="file://" + sys.argv[1]))
    assert events, "no event"
    assert cli.main(["run", "--audio", "file://" + sys.argv[1], "--cache", sys.argv[2], "--events", sys.argv[3]]) == 0
    assert cli.main(["speakers", "list", "--cache", sys.argv[2]]) == 0
    import os  # sockets opened by C libraries (onnxruntime...) bypass the hook: look at the open fds too
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")]
    seen += [f for f in fds if f.startswith("socket:")]
    print("SOCKET_EVENTS", len(seen), seen)
''')


def test_runtime_opens_no_socket(tmp_path):
    r = subprocess.run([sys.executable, "-c", CHILD, str(FIXTURE), str(tmp_path / "c.db"), str(tmp_path / "e.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SOCKET_EVENTS 0 []" in r.stdout, r.stdout + r.stderr[-2000:]


def test_the_audit_hook_does_catch_a_socket():
    """The check above is only worth something if the hook sees sockets: it does."""
    code = CHILD.split("from mlsan_edge.runtime")[0] + "import socket\ntry:\n    socket.socket()\nexcept RuntimeError:\n    print('CAUGHT', seen)\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "CAUGHT ['socket.__new__']" in r.stdout, r.stdout + r.stderr
