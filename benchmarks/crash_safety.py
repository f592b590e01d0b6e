"""Crash safety of the speaker cache: SIGKILL a writing process at random moments, then check.

Each round starts a writer process on one cache file; it enrolls speakers (each acknowledged on
stdout only after its transaction committed), matches and updates voices, caches parameters, and
every few enrolments enrolls and forgets a scratch speaker (forget = delete + WAL checkpoint +
VACUUM, the longest write). The parent kills it with SIGKILL at a random moment (from process
start-up to well into the loop), then opens the cache as the runtime would and checks that it
opens without being moved aside as corrupt, passes `PRAGMA integrity_check`, and holds every
acknowledged enrolment with all its voices. A second part runs two processes on one file at once
(one enrolling, one matching voices like `mlsan-edge run`) and checks that neither lost a write.

    python benchmarks/crash_safety.py --rounds 200 --json benchmarks/results/crash_safety.json

SIGKILL is a process crash: the kernel keeps what was written, so a committed transaction must
survive it. A power cut is harsher: with `synchronous=NORMAL` in WAL mode the last transactions
before the cut may roll back, but the file stays consistent (SQLite's guarantee, not tested here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

DIMS = {"audio": 16, "visual": 4, "text": 8}  # small profiles: this tests storage, not the model
VOICES_PER_ENROLMENT = 3
MAX_SPEAKERS = 1_000_000  # no eviction: every acknowledged enrolment must stay


def _voice(seed: int):
    import numpy as np

    v = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    return v / np.linalg.norm(v)


def _open(db: Path):
    from mlsan_edge.runtime.speakers import SpeakerCache

    # threshold 0.99: random voices never match each other, so no merge hides an enrolment
    return SpeakerCache(db, dims=DIMS, max_speakers=MAX_SPEAKERS, threshold=0.99, auto_merge=False)


# --- child processes --------------------------------------------------------------------------
def writer(db: Path, start: int) -> None:
    """Enroll p{start}, p{start+1}, ... forever, printing each name once committed."""
    import numpy as np

    cache = _open(db)
    rng = np.random.default_rng(start)
    k = start
    while True:
        name = f"p{k}"
        sid = cache.enroll(name, np.stack([_voice(k * 10 + j) for j in range(VOICES_PER_ENROLMENT)]))
        print(name, flush=True)  # acknowledged: committed
        m = cache.identify(_voice(int(rng.integers(1 << 30))))  # a stranger: a new unnamed speaker
        cache.update_profile(m.speaker_id, {"audio": rng.standard_normal(16)})
        cache.put_params(sid, rng.bytes(256), cache.profile_version(sid))
        if k % 5 == 0:
            cache.enroll("scratch", _voice(10 ** 9 + k))
            cache.forget("scratch")  # delete + checkpoint + VACUUM
        k += 1


def runner(db: Path, n: int, seed: int) -> None:
    """Match n strangers' voices like `mlsan-edge run` (identify + profile update + params)."""
    import numpy as np

    cache = _open(db)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        m = cache.identify(_voice(int(rng.integers(1 << 30)) + (1 << 31)))
        v = cache.update_profile(m.speaker_id, {"audio": rng.standard_normal(16)})
        cache.put_params(m.speaker_id, rng.bytes(128), v)
        print(m.speaker_id, flush=True)
    cache.close()


def enroller(db: Path, n: int, start: int) -> None:
    cache = _open(db)
    import numpy as np

    for k in range(start, start + n):
        cache.enroll(f"p{k}", np.stack([_voice(k * 10 + j) for j in range(VOICES_PER_ENROLMENT)]))
        print(f"p{k}", flush=True)
    cache.close()


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


# --- checks -----------------------------------------------------------------------------------
def check(db: Path, names: set[str], ids: set[int] = frozenset()) -> dict:
    """Open the cache as the runtime does; what is missing, and whether it opened intact."""
    before = {p.name for p in db.parent.iterdir()}
    out = {"opened": False, "moved_aside": False, "integrity": None, "lost": [], "lost_ids": [], "short": []}
    try:
        cache = _open(db)
    except Exception as e:  # noqa: BLE001  (a failure to open is what we count)
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["opened"] = True
    out["moved_aside"] = any(".corrupt-" in p for p in {p.name for p in db.parent.iterdir()} - before)
    try:
        out["integrity"] = cache._conn.execute("PRAGMA integrity_check").fetchone()[0]
        everyone = cache.list()
        present = {s.name: s for s in everyone if s.name is not None}
        out["lost"] = sorted(n for n in names if n not in present)
        out["short"] = sorted(n for n in names if n in present and present[n].voice_count < VOICES_PER_ENROLMENT)
        have_ids = {s.id for s in everyone}
        out["lost_ids"] = sorted(i for i in ids if i not in have_ids)
        out["speakers"] = len(everyone)
    finally:
        cache.close()
    return out


def crash_rounds(db: Path, rounds: int, seed: int = 0, max_delay_s: float = 1.5, log=print) -> dict:
    """`rounds` SIGKILLs of a writer at random moments; the cache checked after each."""
    rng = random.Random(seed)
    acked: set[str] = set()
    failures, lost_total, short_total, killed_mid = [], 0, 0, 0
    t_start = time.perf_counter()
    for r in range(rounds):
        p = _spawn("--writer", str(db), "--start", str(r * 100_000))
        delay = rng.uniform(0.05, max_delay_s)  # from process start: some kills land in start-up
        time.sleep(delay)
        alive = p.poll() is None
        if alive:
            os.kill(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        if not alive:
            failures.append({"round": r, "error": f"writer exited on its own: {err[-500:]}"})
        new = {x for x in out.split() if x.startswith("p")}
        killed_mid += bool(new)
        acked |= new
        res = check(db, acked)
        lost_total += len(res["lost"])
        short_total += len(res["short"])
        bad = (not res["opened"] or res["moved_aside"] or res["integrity"] != "ok" or res["lost"] or res["short"])
        if bad:
            failures.append({"round": r, **{k: v for k, v in res.items() if k != "speakers"}})
        if (r + 1) % 20 == 0 or bad:
            log(f"round {r + 1}/{rounds}: {len(acked)} enrolments acknowledged, {res.get('speakers')} speakers, "
                f"lost {lost_total}, failures {len(failures)}")
    return {"rounds": rounds, "acknowledged_enrolments": len(acked), "rounds_with_enrolments_before_kill": killed_mid,
            "enrolments_lost": lost_total, "enrolments_missing_voices": short_total,
            "caches_failing_to_open": sum(1 for f in failures if not f.get("opened", True)),
            "caches_moved_aside_as_corrupt": sum(1 for f in failures if f.get("moved_aside")),
            "failures": failures, "seconds": round(time.perf_counter() - t_start, 1),
            "kill_delay_s": [0.05, max_delay_s], "file_bytes": db.stat().st_size}


def shared_file(db: Path, n_enrol: int = 60, n_match: int = 120) -> dict:
    """One process enrolling while another matches voices, on the same file at the same time."""
    a = _spawn("--enroller", str(db), "--n", str(n_enrol), "--start", "900000000")
    b = _spawn("--runner", str(db), "--n", str(n_match), "--seed", "1")
    out_a, err_a = a.communicate(timeout=600)
    out_b, err_b = b.communicate(timeout=600)
    names = set(out_a.split())
    ids = {int(x) for x in out_b.split()}
    res = check(db, names, ids)
    return {"enrolments": len(names), "matched_speakers": len(ids), "exit_codes": [a.returncode, b.returncode],
            "errors": [e[-500:] for e in (err_a, err_b) if e.strip()], "enrolments_lost": len(res["lost"]),
            "speakers_lost": len(res["lost_ids"]), "integrity": res["integrity"], "opened": res["opened"],
            "moved_aside": res["moved_aside"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="where the cache file lives (default: a temporary folder)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--writer", help=argparse.SUPPRESS)
    ap.add_argument("--runner", help=argparse.SUPPRESS)
    ap.add_argument("--enroller", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.writer:
        writer(Path(a.writer), a.start)
        return 0
    if a.runner:
        runner(Path(a.runner), a.n, a.seed)
        return 0
    if a.enroller:
        enroller(Path(a.enroller), a.n, a.start)
        return 0

    import tempfile

    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        crash = crash_rounds(Path(d) / "crash.db", a.rounds, a.seed)
        shared = shared_file(Path(d) / "shared.db")
    res = {"benchmark": "speaker-cache crash safety (SIGKILL) and two processes on one file",
           "command": "python benchmarks/crash_safety.py " + " ".join(sys.argv[1:]),
           "crash": crash, "shared": shared,
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count()}}
    print(json.dumps({k: v for k, v in crash.items() if k != "failures"}, indent=2))
    print(json.dumps(shared, indent=2))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    ok = (crash["enrolments_lost"] == 0 and not crash["failures"] and shared["enrolments_lost"] == 0
          and shared["speakers_lost"] == 0 and shared["integrity"] == "ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
