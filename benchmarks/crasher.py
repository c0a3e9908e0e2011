"""Crash harness in the spirit of Qdrant's crasher: writers against msir servers on PostgreSQL while servers and the
indexer are killed with SIGKILL at random moments and the database drops every connection; afterwards nothing that
was acknowledged may be lost and nothing acknowledged as deleted may come back.

    nice -n 10 .venv/bin/python benchmarks/crasher.py --duration 1800 --kills 120 --servers 2 --seed 1 --tag long

What runs:

* a collection built with ``msir-index build`` (split ``base``) on a PostgreSQL database of its own
  (``issue23_crasher_<random>``, dropped at the end), served by ``--servers`` ``msir-serve`` processes (the
  harness :mod:`app.server_process`) that follow one another through the change feed;
* writers, each recording only what was *acknowledged*: uploads (``POST /v1/images``, split ``crash``; a 201 is an
  acknowledged write), deletes of acknowledged uploads (a 204), relabels (a 200), and ``msir-index add`` of image files
  (exit 0). A request that failed or got no answer is *in doubt*: it may or may not have happened, and is not checked;
* faults, spread over the run (``--kills`` of them): ``kill -9`` of a random server (restarted at once), ``kill -9``
  of a running ``msir-index add``, and, every fourth fault (the first included), a database fault. On the machine's
  shared PostgreSQL (other users' databases live there) that is ``pg_terminate_backend`` of every connection to the
  crasher's database. With ``--own-postgres`` the crasher runs a PostgreSQL server of its own (``initdb`` in a
  temporary directory, loopback, a free port, as the ``postgres`` user when run as root), and every other database
  fault is a real crash of that server: ``pg_ctl stop -m immediate`` (no checkpoint: WAL recovery on the next start),
  0.5-5 s down, then started again.

Checks at the end (servers restarted, then stopped gracefully): every acknowledged write is a row (by sha256) unless
its delete was acknowledged; every acknowledged delete is absent (``resurrected``); every acknowledged relabel is
the row's labels unless a later relabel of it was in doubt; each server's collection size equals the database's rows
(rows = vectors); ``msir-index verify`` passes; a fixed query set filtered to split ``base`` (which the writers never
touch) returns the same top-10 as before the faults. Writes results/benchmarks/crasher-<tag>.json and .md naming the
device and the load.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.server_process import ServerNotReady, ServerProcess, free_port, kill, start_server, stop_server  # noqa: E402
from benchmarks.own_postgres import OwnPostgres  # noqa: E402
from training.runinfo import cpu_name, git_sha  # noqa: E402

logger = logging.getLogger("crasher")
CHECKPOINT = REPO / "demo" / "checkpoint" / "mscfnet4_cifar10.safetensors"
BIN = Path(sys.executable).parent
ADMIN_URL = os.environ.get("MSIR_CRASHER_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
API_KEY = "crasher-key"
AUTH = {"X-API-Key": API_KEY}
LABELS = ("red", "green", "blue", "grey")
BASE_IMAGES = 40
QUERIES = 8


def png(rng: random.Random, size: int = 32) -> bytes:
    """A distinct image: a random colour field with random rectangles (unique bytes, so a unique sha256)."""
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = [rng.randrange(256) for _ in range(3)]
    for _ in range(3):
        x, y = rng.randrange(size - 4), rng.randrange(size - 4)
        w, h = rng.randrange(2, size - x), rng.randrange(2, size - y)
        pixels[y : y + h, x : x + w] = [rng.randrange(256) for _ in range(3)]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


@dataclass
class Ledger:
    """What the writers were told happened (acknowledged) and what is in doubt."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    written: dict[str, int | None] = field(default_factory=dict)  # sha256 -> id (None: CLI add, id unknown)
    deleted: set[int] = field(default_factory=set)
    labels: dict[int, list[str]] = field(default_factory=dict)  # last acknowledged relabel
    relabel_doubt: set[int] = field(default_factory=set)  # a relabel after the last acknowledged one was in doubt
    delete_doubt: set[int] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "uploads_acked": 0,
            "cli_adds_acked": 0,
            "deletes_acked": 0,
            "relabels_acked": 0,
            "in_doubt": 0,
            "refused_4xx": 0,
        }
    )

    def live_ids(self) -> list[int]:
        with self.lock:
            return [i for i in self.written.values() if i is not None and i not in self.deleted]


class Cluster:
    """The servers (one per slot, restarted after a kill) and the faults."""

    def __init__(
        self, directory: Path, url: str, count: int, logs: Path, admin_url: str, postgres: OwnPostgres | None = None
    ) -> None:
        self.directory, self.url, self.logs, self.admin_url, self.postgres = directory, url, logs, admin_url, postgres
        self.lock = threading.Lock()
        self.servers: list[ServerProcess | None] = [None] * count
        self.kills = {"server": 0, "indexer": 0, "database_connections": 0, "database_crash": 0}
        self.indexers: set[subprocess.Popen[bytes]] = set()

    def start(self, slot: int) -> None:
        port = free_port()
        env = clean_env(
            MSIR_COLLECTION_DIR=str(self.directory), MSIR_DATABASE_URL=self.url, MSIR_HOST="127.0.0.1",
            MSIR_PORT=str(port), MSIR_DEVICE="cpu", MSIR_API_KEY=API_KEY, MSIR_RUNTIME="torch",
            MSIR_CHECKPOINT=str(CHECKPOINT), MSIR_LOG_LEVEL="info", MSIR_MAX_PER_CLIENT="0",
            MSIR_THUMBNAIL_CACHE_DIR=str(self.directory / "thumbs"),
        )  # fmt: skip
        command = [str(BIN / "msir-serve")]
        log = self.logs / f"server-{slot}-{port}.log"
        for attempt in range(5):  # a start can meet the database while its connections are being cut
            try:
                server = start_server(command, port=port, log=log, env=env, cwd=self.logs, timeout_s=120)
                break
            except ServerNotReady:
                if attempt == 4:
                    raise
                time.sleep(1)
                port = free_port()
                env["MSIR_PORT"] = str(port)
                log = self.logs / f"server-{slot}-{port}.log"
        with self.lock:
            self.servers[slot] = server

    def urls(self) -> list[str]:
        with self.lock:
            return [s.url for s in self.servers if s is not None]

    def kill_server(self, rng: random.Random) -> None:
        slot = rng.randrange(len(self.servers))
        with self.lock:
            server, self.servers[slot] = self.servers[slot], None
        if server is not None:
            kill(server)  # SIGKILL, by the PID that was started
            self.kills["server"] += 1
        self.start(slot)

    def kill_indexer(self) -> bool:
        with self.lock:
            running = [p for p in self.indexers if p.poll() is None]
        if not running:
            return False
        running[0].send_signal(signal.SIGKILL)
        self.kills["indexer"] += 1
        return True

    def cut_database(self) -> None:
        name = sa.make_url(self.url).database
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> "
                        "pg_backend_pid()"), {"d": name},
            )  # fmt: skip
        engine.dispose()
        self.kills["database_connections"] += 1

    def crash_database(self, rng: random.Random) -> bool:
        """Crash and restart the crasher's own PostgreSQL server (False when it has none)."""
        if self.postgres is None:
            return False
        self.postgres.crash(rng.uniform(0.5, 5.0))
        self.kills["database_crash"] += 1
        return True

    def stop_all(self) -> None:
        for slot, server in enumerate(self.servers):
            if server is not None:
                stop_server(server)
                self.servers[slot] = None


def search_top10(url: str, queries: list[bytes]) -> list[list[int]]:
    out = []
    for q in queries:
        r = httpx.post(f"{url}/v1/search", files={"image": ("q.png", q, "image/png")},
                       data={"k": "10", "split": "base"}, timeout=60)  # fmt: skip
        r.raise_for_status()
        out.append([n["id"] for n in r.json()["neighbours"]])
    return out


def writer_uploads(cluster: Cluster, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        urls = cluster.urls()
        if not urls:
            time.sleep(0.05)
            continue
        images = [png(rng) for _ in range(rng.randint(1, 3))]
        label = rng.choice(LABELS)
        files = [("images", (f"u{i}.png", data, "image/png")) for i, data in enumerate(images)]
        try:
            form = {"labels": [label] * len(images), "split": "crash"}
            r = httpx.post(f"{rng.choice(urls)}/v1/images", files=files, data=form, headers=AUTH, timeout=30)
        except httpx.HTTPError:
            r = None
        with ledger.lock:
            if r is not None and r.status_code == 201:
                for added, data in zip(r.json()["added"], images, strict=True):
                    ledger.written[hashlib.sha256(data).hexdigest()] = int(added["id"])
                    ledger.labels[int(added["id"])] = [label]
                    ledger.counts["uploads_acked"] += 1
            elif r is not None and 400 <= r.status_code < 500:  # a bug of this harness: reported, fails the run
                ledger.counts["refused_4xx"] += 1
                ledger.refusals.append(r.text[:300])
            else:
                ledger.counts["in_doubt"] += 1


def writer_edits(cluster: Cluster, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        urls, ids = cluster.urls(), ledger.live_ids()
        if not urls or len(ids) < 4:
            time.sleep(0.1)
            continue
        image_id = rng.choice(ids)
        url = rng.choice(urls)
        try:
            if rng.random() < 0.4:
                r = httpx.delete(f"{url}/v1/images/{image_id}", headers=AUTH, timeout=30)
                ok = r.status_code == 204
                with ledger.lock:
                    if ok:
                        ledger.deleted.add(image_id)
                        ledger.counts["deletes_acked"] += 1
                    else:
                        ledger.delete_doubt.add(image_id)
                        ledger.counts["in_doubt"] += 1
            else:
                label = rng.choice(LABELS)
                r = httpx.patch(f"{url}/v1/images/{image_id}", json={"labels": [label]}, headers=AUTH, timeout=30)
                with ledger.lock:
                    if r.status_code == 200:
                        ledger.labels[image_id] = [label]
                        ledger.relabel_doubt.discard(image_id)
                        ledger.counts["relabels_acked"] += 1
                    else:
                        ledger.relabel_doubt.add(image_id)
                        ledger.counts["in_doubt"] += 1
        except httpx.HTTPError:
            with ledger.lock:
                ledger.delete_doubt.add(image_id)
                ledger.relabel_doubt.add(image_id)
                ledger.counts["in_doubt"] += 1
        time.sleep(0.05)


def writer_cli(cluster: Cluster, ledger: Ledger, stop: threading.Event, seed: int, files: Path) -> None:
    """``msir-index add`` of a few files at a time (the indexer that the faults kill)."""
    rng = random.Random(seed)
    while not stop.is_set():
        batch = []
        for _ in range(rng.randint(1, 4)):
            data = png(rng)
            path = files / f"{hashlib.sha256(data).hexdigest()}.png"
            path.write_bytes(data)
            batch.append((path, data))
        command = [
            str(BIN / "msir-index"), "add", str(cluster.directory), "--db", cluster.url, "-c", str(CHECKPOINT),
            "--runtime", "torch", "--device", "cpu", "--split", "crash", *(str(p) for p, _ in batch),
        ]  # fmt: skip
        process = subprocess.Popen(command, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with cluster.lock:
            cluster.indexers.add(process)
        code = process.wait()
        with cluster.lock:
            cluster.indexers.discard(process)
        with ledger.lock:
            if code == 0:
                for _, data in batch:
                    ledger.written.setdefault(hashlib.sha256(data).hexdigest(), None)
                    ledger.counts["cli_adds_acked"] += 1
            else:
                ledger.counts["in_doubt"] += 1


def faults(cluster: Cluster, stop: threading.Event, rng: random.Random, count: int, duration: float) -> None:
    """``count`` faults at random moments spread over ``duration`` seconds."""
    start = time.monotonic()
    moments = sorted(rng.uniform(0.1, 0.95) * duration for _ in range(count))
    for i, at in enumerate(moments):
        while not stop.is_set() and time.monotonic() - start < at:
            time.sleep(0.05)
        if stop.is_set():
            return
        if i % 8 == 0 and cluster.crash_database(rng):
            pass
        elif i % 4 == 0:
            cluster.cut_database()
        elif i % 4 == 1 and cluster.kill_indexer():
            pass
        else:  # half the faults, and an indexer kill when no `msir-index add` is running
            cluster.kill_server(rng)


def check(cluster: Cluster, ledger: Ledger, baseline: list[list[int]], queries: list[bytes]) -> dict[str, Any]:
    engine = sa.create_engine(cluster.url)
    with engine.connect() as conn:
        rows = {r.sha256: (int(r.id), list(r.labels or [])) for r in conn.execute(sa.text(
            "SELECT id, sha256, labels FROM images"))}  # fmt: skip
    engine.dispose()
    by_id = {i: labels for i, labels in rows.values()}
    gone = ledger.deleted | ledger.delete_doubt  # a delete in doubt may have happened
    lost = [sha for sha, i in ledger.written.items() if sha not in rows and (i is None or i not in gone)]
    resurrected = sorted(i for i in ledger.deleted if i in by_id)
    wrong_labels = sorted(
        i for i, labels in ledger.labels.items()
        if i in by_id and i not in ledger.relabel_doubt and by_id[i] != labels
    )  # fmt: skip
    sizes = {}
    for url in cluster.urls():
        deadline = time.monotonic() + 60
        while True:  # a restarted server follows the feed within MSIR_SYNC_INTERVAL_MS; give it that time
            size = httpx.get(f"{url}/v1/collection", timeout=30).json()["size"]
            if size == len(rows) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        sizes[url] = size
    top10 = search_top10(cluster.urls()[0], queries)
    cluster.stop_all()  # graceful: each saves its index
    verify = subprocess.run(
        [str(BIN / "msir-index"), "verify", str(cluster.directory), "--db", cluster.url, "-c", str(CHECKPOINT),
         "--json"],
        env=clean_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        report = json.loads(verify.stdout)
    except json.JSONDecodeError:
        report = {"ok": False, "problems": [verify.stdout[-2000:] + verify.stderr[-2000:]]}
    return {
        "rows": len(rows),
        "server_sizes": list(sizes.values()),
        "rows_equal_vectors": all(s == len(rows) for s in sizes.values())
        and report.get("rows") == report.get("vectors") == len(rows),
        "verify_rows_vectors": [report.get("rows"), report.get("vectors")],
        "lost": len(lost),
        "lost_sample": lost[:10],
        "resurrected": len(resurrected),
        "resurrected_sample": resurrected[:10],
        "wrong_labels": len(wrong_labels),
        "verify_ok": bool(report.get("ok")) and verify.returncode == 0,
        "verify_problems": report.get("problems", []),
        "top10_same": top10 == baseline,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = [round(v, 2) for v in os.getloadavg()]
    postgres = OwnPostgres() if args.own_postgres else None
    try:
        return run_against(args, postgres, load_before)
    finally:
        if postgres is not None:
            postgres.close()


def run_against(args: argparse.Namespace, postgres: OwnPostgres | None, load_before: list[float]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    name = f"issue23_crasher_{uuid.uuid4().hex[:10]}"
    admin_url = postgres.admin_url if postgres else ADMIN_URL
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # outlives crashes
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    started = time.monotonic()
    cluster: Cluster | None = None
    stop = threading.Event()
    try:
        with TemporaryDirectory(prefix="msir-crasher-") as tmp:
            work = Path(tmp)
            base = work / "base"
            base.mkdir()
            for i in range(BASE_IMAGES):
                (base / f"b{i:03d}.png").write_bytes(png(rng))
            queries = [png(rng) for _ in range(QUERIES)]
            directory = work / "collection"
            subprocess.run(
                [str(BIN / "msir-index"), "build", str(directory), "-c", str(CHECKPOINT), "--folder", str(base),
                 "--split", "base", "--db", url, "--runtime", "torch", "--device", "cpu", "--workers", "0"],
                env=clean_env(), check=True, capture_output=True,
            )  # fmt: skip
            cluster = Cluster(directory, url, args.servers, work / "logs", admin_url, postgres)
            for slot in range(args.servers):
                cluster.start(slot)
            baseline = search_top10(cluster.urls()[0], queries)
            ledger = Ledger()
            (work / "files").mkdir()
            threads = [
                threading.Thread(target=writer_uploads, args=(cluster, ledger, stop, args.seed * 10 + 1)),
                threading.Thread(target=writer_uploads, args=(cluster, ledger, stop, args.seed * 10 + 2)),
                threading.Thread(target=writer_edits, args=(cluster, ledger, stop, args.seed * 10 + 3)),
                threading.Thread(target=writer_cli, args=(cluster, ledger, stop, args.seed * 10 + 4, work / "files")),
            ]
            for t in threads:
                t.start()
            chaos = threading.Thread(target=faults, args=(cluster, stop, rng, args.kills, args.duration))
            chaos.start()
            chaos.join(args.duration + 600)
            time.sleep(max(0.0, args.duration - (time.monotonic() - started)))
            stop.set()
            for t in threads:
                t.join(120)
            for slot, server in enumerate(cluster.servers):  # every server up again for the checks
                if server is None or server.process.poll() is not None:
                    cluster.start(slot)
            result = check(cluster, ledger, baseline, queries)
            counts = dict(ledger.counts)
            refusals = ledger.refusals[:5]
    finally:
        stop.set()
        if cluster is not None:
            for server in cluster.servers:
                if server is not None:
                    kill(server)
            for process in list(cluster.indexers):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": name})  # fmt: skip
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
    writes = counts["uploads_acked"] + counts["cli_adds_acked"]
    return {
        "benchmark": "crasher",
        "tag": args.tag,
        "seed": args.seed,
        "duration_s": args.duration,
        "wall_s": round(time.monotonic() - started, 1),
        "servers": args.servers,
        "device": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "load": {"before": load_before, "after": [round(v, 2) for v in os.getloadavg()]},
        "git": git_sha(),
        "database": (
            "PostgreSQL, a server of its own: crashed (pg_ctl stop -m immediate, 0.5-5 s down, started again) and "
            "its connections cut with pg_terminate_backend"
            if postgres
            else "PostgreSQL (a database of its own; connections cut with pg_terminate_backend, server not stopped)"
        ),
        "kills": dict(cluster.kills) if cluster else {},
        "kills_total": sum(cluster.kills.values()) if cluster else 0,
        "process_kills": cluster.kills["server"] + cluster.kills["indexer"] if cluster else 0,
        "writes_acked": writes,
        "counts": counts,
        "refusals_sample": refusals,
        **result,
        "ok": result["lost"] == 0
        and result["resurrected"] == 0
        and result["wrong_labels"] == 0
        and counts["refused_4xx"] == 0
        and result["verify_ok"]
        and result["rows_equal_vectors"]
        and result["top10_same"],
    }


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js = out / f"crasher-{report['tag']}.json"
    md = out / f"crasher-{report['tag']}.md"
    js.write_text(json.dumps(report, indent=2) + "\n")
    kills = ", ".join(f"{k}: {v}" for k, v in report["kills"].items())
    md.write_text(
        f"# Crasher run `{report['tag']}`\n\n"
        f"Device: {report['device']['cpu']} ({report['device']['cores']} cores); load average before "
        f"{report['load']['before']}, after {report['load']['after']}. Seed {report['seed']}, "
        f"{report['duration_s']:g} s of writes against {report['servers']} server(s) on {report['database']}.\n\n"
        f"| measure | value |\n|---|---|\n"
        f"| writes acknowledged (uploads + `msir-index add`) | {report['writes_acked']} |\n"
        f"| deletes acknowledged | {report['counts']['deletes_acked']} |\n"
        f"| relabels acknowledged | {report['counts']['relabels_acked']} |\n"
        f"| requests in doubt (no answer / 5xx, not checked) | {report['counts']['in_doubt']} |\n"
        f"| faults ({kills}) | {report['kills_total']} |\n"
        f"| of which processes killed with SIGKILL (servers + `msir-index add`) | {report['process_kills']} |\n"
        f"| lost | {report['lost']} |\n| resurrected | {report['resurrected']} |\n"
        f"| wrong labels | {report['wrong_labels']} |\n"
        f"| rows = vectors (every server, and the saved index) | {report['rows_equal_vectors']} ({report['rows']}) |\n"
        f"| `msir-index verify` | {'passes' if report['verify_ok'] else report['verify_problems']} |\n"
        f"| fixed queries: same top-10 as before the faults | {report['top10_same']} |\n"
        f"| **ok** | **{report['ok']}** |\n"
    )
    return js, md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of writes and faults.")
    parser.add_argument("--kills", type=int, default=10, help="Faults in the run (server/indexer kills, cuts).")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument(
        "--own-postgres",
        action="store_true",
        help="Run a PostgreSQL server of its own and crash it as every other database fault.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="Names the results files (default: the seed and duration).")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    args.tag = args.tag or f"s{args.seed}-{int(args.duration)}s"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(args)
    _, md = write_report(report, args.out)
    logger.info("%s: ok=%s writes acked=%d faults=%d lost=%d resurrected=%d (%s)", args.tag, report["ok"],
                report["writes_acked"], report["kills_total"], report["lost"], report["resurrected"], md)  # fmt: skip
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
