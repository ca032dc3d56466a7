#!/usr/bin/env python3
"""Soak: a served cluster under mixed load for a given time, with a worker killed and relaunched
half-way, checked for lost, duplicated or reordered tokens and for memory growth.

Starts moe-coordinator and an mpirun job of moe-worker ranks (the tiny-dsv3 model unless --model is
given), then keeps --clients gRPC clients busy until --minutes have passed. Each request is drawn:
  2%  invalid (max_tokens 0, or a token id outside the vocabulary): must be INVALID_ARGUMENT
  10% cancelled by the client after a few tokens
  5%  with a short deadline (50-300 ms): DEADLINE_EXCEEDED unless it finished in time
  the rest half greedy (one of 16 short and long prompts; its tokens must equal the engine alone's,
  from moe-generate, for as many tokens as were asked), half sampled (temperature 0.8, a seed).
Half-way one worker rank gets SIGKILL; the job ends, requests in flight end UNAVAILABLE, and the
workers are relaunched against the same coordinator. Coordinator and worker RSS are sampled every
5 s; the slope after the first fifth of the run is reported (goal: under 1 MB/min).

Prints requests completed, failures by status code, tokens streamed, greedy requests checked and
mismatched, latency p50/p99, RSS and its slope; exits 1 when a greedy request's tokens differ, a
status is unexpected, KV blocks stay held, or the coordinator's RSS grows faster than 1 MB/min.

Usage: .venv/bin/python3 bench/soak.py --build build --minutes 30 [--model DIR] [--clients 8]
"""
import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
import grpc  # noqa: E402
from moe_client import load_stubs  # noqa: E402

pb, pb_grpc = load_stubs()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def worker_pids():
    out = subprocess.run(["pgrep", "-f", "worker/moe-worker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def slope_mb_per_min(samples):
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    return 60 * sum((t - mx) * (v - my) for t, v in samples) / den if den else 0.0


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p * (len(values) - 1) + 0.5))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--model", help="checkpoint folder (default: tiny-dsv3, f32, written into --work)")
    ap.add_argument("--work", default="/tmp/moe_soak")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    os.makedirs(args.work, exist_ok=True)
    model = args.model
    if not model:
        model = os.path.join(args.work, "tiny-dsv3")
        if not os.path.exists(os.path.join(model, "config.json")):
            subprocess.run([f"{build}/tools/moe-make-model", "--preset", "tiny-dsv3", "--dtype", "f32",
                            "--out", model], check=True, capture_output=True)
    vocab = int(re.search(r'"vocab_size":\s*(\d+)', open(os.path.join(model, "config.json")).read()).group(1))

    # The greedy prompts and the engine alone's tokens for them.
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(min(vocab, 4000)) for _ in range(n)] for n in
               [3, 5, 8, 12, 17, 24, 31, 40, 48, 64, 80, 96, 128, 160, 200, 250]]
    reference = []
    for p in prompts:
        out = subprocess.run([f"{build}/tools/moe-generate", "--model", model, "--threads", "1",
                              "--prompt-ids", ",".join(map(str, p)), "--max-new-tokens", "64"],
                             check=True, capture_output=True, text=True).stdout
        reference.append([int(x) for x in re.findall(r"-?\d+", out.strip().splitlines()[-1])])

    grpc_port, cluster_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    coordinator = subprocess.Popen(
        [f"{build}/coordinator/moe-coordinator", "--model", model, "--world-size", str(args.ranks),
         "--listen", f"127.0.0.1:{grpc_port}", "--cluster-listen", f"127.0.0.1:{cluster_port}",
         "--metrics-port", str(metrics_port), "--max-running", "16", "--max-queue", "64"],
        stdout=open(os.path.join(args.work, "coordinator.log"), "w"), stderr=subprocess.STDOUT)

    def launch_workers(n):
        return subprocess.Popen(
            ["mpirun", "-np", str(args.ranks), f"{build}/worker/moe-worker", "--coordinator",
             f"127.0.0.1:{cluster_port}", "--model", model, "--heartbeat-ms", "300"],
            stdout=open(os.path.join(args.work, f"workers-{n}.log"), "w"), stderr=subprocess.STDOUT, env=env)

    def metric(series):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(series + " "):
                        return float(line.split()[-1])
        except OSError:
            pass
        return None

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = pb_grpc.InferenceStub(channel)

    def serving():
        try:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return metric("moe_serving") == 1

    workers = launch_workers(0)
    deadline = time.time() + 120
    while not serving() and time.time() < deadline:
        time.sleep(0.5)
    if not serving():
        sys.exit(f"soak: the cluster did not start; logs in {args.work}")

    lock = threading.Lock()
    stats = {"completed": 0, "tokens": 0, "greedy_checked": 0, "greedy_mismatched": 0,
             "unexpected": 0, "by_code": {}}
    latencies = []
    mismatches = []
    start = time.time()
    end = start + 60 * args.minutes
    stop = threading.Event()

    def count(code):
        with lock:
            stats["by_code"][code] = stats["by_code"].get(code, 0) + 1

    def client(i):
        r = random.Random(args.seed * 1000 + i)
        while not stop.is_set() and time.time() < end:
            kind = r.random()
            req = pb.GenerateRequest(ignore_eos=True)
            expected_code, cancel_after, timeout, check = grpc.StatusCode.OK, None, 60, None
            if kind < 0.02:
                if r.random() < 0.5:
                    req.prompt_ids.extend([1, 2]); req.max_tokens = 0  # noqa: E702
                else:
                    req.prompt_ids.extend([1, vocab + 5]); req.max_tokens = 4  # noqa: E702
                expected_code = grpc.StatusCode.INVALID_ARGUMENT
            else:
                k = r.randrange(len(prompts))
                req.prompt_ids.extend(prompts[k])
                req.max_tokens = r.randint(8, 64)
                if kind < 0.12:
                    cancel_after = r.randint(1, 4)
                elif kind < 0.17:
                    timeout = r.uniform(0.05, 0.3)
                if r.random() < 0.5:
                    req.sampling.temperature = 0.0
                    check = reference[k][:req.max_tokens]
                else:
                    req.sampling.temperature = 0.8
                    req.sampling.seed = r.randrange(1 << 30)
            t0 = time.time()
            tokens = []
            call = stub.Generate(req, timeout=timeout)
            code = grpc.StatusCode.OK
            try:
                for resp in call:
                    tokens.extend(resp.token_ids)
                    if cancel_after is not None and len(tokens) >= cancel_after:
                        call.cancel()
            except grpc.RpcError as e:
                code = e.code()
            count(code.name)
            if code == grpc.StatusCode.UNAVAILABLE:
                time.sleep(0.1)  # the outage: do not spin
            ok_codes = {expected_code, grpc.StatusCode.UNAVAILABLE}  # UNAVAILABLE: the worker outage
            if cancel_after is not None:
                ok_codes.add(grpc.StatusCode.CANCELLED)
            if timeout < 1:
                ok_codes.add(grpc.StatusCode.DEADLINE_EXCEEDED)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                ok_codes.add(code)  # a full queue during the outage's backlog
            with lock:
                stats["tokens"] += len(tokens)
                if code not in ok_codes:
                    stats["unexpected"] += 1
                if code == grpc.StatusCode.OK:
                    stats["completed"] += 1
                    latencies.append(time.time() - t0)
                    if check is not None:
                        stats["greedy_checked"] += 1
                        if tokens != check:
                            stats["greedy_mismatched"] += 1
                            mismatches.append((list(req.prompt_ids)[:8], check[:8], tokens[:8]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    rss = {"coordinator": [], "workers": []}
    killed = False
    outage = None
    try:
        while time.time() < end:
            time.sleep(5)
            now = time.time() - start
            c = rss_mb(coordinator.pid)
            w = [rss_mb(p) for p in worker_pids()]
            if c is not None:
                rss["coordinator"].append((now, c))
            if w and None not in w and not (outage and outage[1] is None):
                rss["workers"].append((now, sum(w)))
            if not killed and now > 30 * args.minutes:  # half-way
                pids = worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed = True
                    outage = [now, None]
                    print(f"soak: SIGKILL to worker pid {pids[-1]} at {now:.0f} s", flush=True)
                    workers.wait(timeout=60)
                    while metric("moe_serving") == 1:
                        time.sleep(0.2)
                    workers = launch_workers(1)
                    while not serving():
                        time.sleep(0.2)
                    outage[1] = time.time() - start
                    print(f"soak: serving again at {outage[1]:.0f} s ({outage[1] - outage[0]:.1f} s outage)", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
        held = metric("moe_kv_blocks_used")
        for _ in range(50):  # a cancelled request's blocks return at the next step
            if not held:
                break
            time.sleep(0.1)
            held = metric("moe_kv_blocks_used")
        coordinator.send_signal(signal.SIGTERM)
        try:
            coordinator.wait(timeout=60)
            workers.wait(timeout=60)
        except subprocess.TimeoutExpired:
            coordinator.kill()
            workers.kill()

    elapsed = time.time() - start
    warm = [s for s in rss["coordinator"] if s[0] > elapsed / 5]
    warm_w = [s for s in rss["workers"] if s[0] > elapsed / 5 and (not outage or s[0] > outage[1] + 10)]
    c_slope, w_slope = slope_mb_per_min(warm), slope_mb_per_min(warm_w)
    print(f"soak: {elapsed / 60:.1f} min, {args.clients} clients, {args.ranks} worker ranks, model {model}")
    print(f"  requests completed {stats['completed']}, by status: "
          + ", ".join(f"{k} {v}" for k, v in sorted(stats['by_code'].items())))
    print(f"  tokens streamed {stats['tokens']}; greedy requests checked against the engine alone: "
          f"{stats['greedy_checked']}, mismatched {stats['greedy_mismatched']}; unexpected statuses {stats['unexpected']}")
    print(f"  latency of completed requests p50 {percentile(latencies, 0.5):.2f} s p99 {percentile(latencies, 0.99):.2f} s")
    if outage:
        print(f"  worker killed at {outage[0]:.0f} s, serving again after {outage[1] - outage[0]:.1f} s")
    print(f"  RSS coordinator {warm[0][1] if warm else 0:.1f} -> {rss['coordinator'][-1][1] if rss['coordinator'] else 0:.1f} MB "
          f"(slope after warm-up {c_slope:+.2f} MB/min); workers {warm_w[-1][1] if warm_w else 0:.1f} MB "
          f"(slope {w_slope:+.2f} MB/min)")
    print(f"  KV blocks held at the end: {held}")
    for m in mismatches[:5]:
        print(f"  mismatch: prompt {m[0]}... want {m[1]}... got {m[2]}...")
    bad = stats["greedy_mismatched"] or stats["unexpected"] or (held or 0) > 0 or c_slope > 1.0
    print("soak: " + ("FAILED" if bad else "passed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
