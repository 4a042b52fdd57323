"""How resprop (and PyTorch) behave when the cores are shared: docs/engine.md, "Shared cores".

Three measurements, each repeated ROUNDS times with the engines (or builds) alternating, so
all see the same machine state; prints Markdown tables of medians.

1. `pair`: a workload's step alone, then two identical processes at once (each with the
   default threads, i.e. both cores), for resprop and, with --torch-python, PyTorch. The
   pair's figure is the mean of the two processes' median steps; the target is at most 2.5x
   the solo step (a fair share of the cores is 2x).
2. `small`: a small network's training run (`train --net mlp --units 4 --width 8 --batch 4
   --data digits --epochs 10 --record-every 50`), whole-process wall time with --threads 2
   against --threads 1: alone, beside a busy loop (one process spinning on the CPU), and
   pinned to one core (taskset -c 0). The target is --threads 2 within 1.5x of --threads 1.
3. `unloaded` (with --old BIN): this build against an earlier one, alternating, one
   workload's step at a time; the ratio new/old per pair and its median.

    cargo build --release
    python benches/contention.py --rounds 5 --torch-python /path/to/venv/bin/python
    python benches/contention.py --only unloaded --old /tmp/resprop-previous --rounds 10
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESPROP = os.path.join(HERE, "..", "target", "release", "resprop")
PYTORCH = {
    "W1": ("pytorch_mlp.py", ["--units", "100"]),
    "W2": ("pytorch_resnet.py", ["--net", "resnet110", "--batch", "32"]),
}
LINE = re.compile(r"median ([0-9.]+) s")
SMALL = ["train", "--net", "mlp", "--units", "4", "--width", "8", "--batch", "4",
         "--data", "digits", "--epochs", "10", "--record-every", "50"]


def bench_cmd(engine, workload, mode, repeat, torch_python, binary):
    if engine == "resprop":
        return [binary, "bench", "--workload", workload, "--mode", mode, "--repeat", str(repeat)]
    script, args = PYTORCH[workload]
    return [torch_python, os.path.join(HERE, script), "--mode", mode,
            "--repeat", str(repeat)] + args


def step_median(out, cmd):
    m = LINE.search(out)
    if not m:
        sys.exit(f"no timing line in the output of {' '.join(cmd)}:\n{out}")
    return float(m.group(1))


def run_steps(cmds):
    """Starts every command at once; the median step of each."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    for p, c in zip(procs, cmds):
        if p.returncode != 0:
            sys.exit(f"{' '.join(c)} failed")
    return [step_median(o, c) for o, c in zip(outs, cmds)]


TIMEOUT = 120.0


def wall(cmd):
    """Seconds the command took, or infinity when it did not finish within TIMEOUT."""
    t = time.perf_counter()
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.perf_counter() - t


def pair(a):
    engines = ["resprop"] + (["pytorch"] if a.torch_python else [])
    print("| engine | workload | solo step (s) | two at once (s) | ratio |")
    print("|---|---|---|---|---|")
    for workload in a.workloads:
        solo = {e: [] for e in engines}
        both = {e: [] for e in engines}
        for _ in range(a.rounds):
            for e in engines:
                cmd = bench_cmd(e, workload, "profile", a.repeat, a.torch_python, a.resprop)
                solo[e] += run_steps([cmd])
                both[e].append(statistics.mean(run_steps([cmd, cmd])))
        for e in engines:
            s, b = statistics.median(solo[e]), statistics.median(both[e])
            print(f"| {e} | {workload} profile | {s:.3f} | {b:.3f} | {b / s:.2f} |", flush=True)


def small(a):
    print("| condition | --threads 2 (s) | --threads 1 (s) | ratio |")
    print("|---|---|---|---|")
    for condition in ["alone", "beside a busy loop", "pinned to one core"]:
        t2, t1 = [], []
        for _ in range(a.rounds):
            busy = None
            if condition == "beside a busy loop":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            pre = ["taskset", "-c", "0"] if condition == "pinned to one core" else []
            try:
                t2.append(wall(pre + [a.resprop] + SMALL + ["--threads", "2"]))
                t1.append(wall(pre + [a.resprop] + SMALL + ["--threads", "1"]))
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
        m2, m1 = statistics.median(t2), statistics.median(t1)
        shown = [f"{m:.3f}" if m < TIMEOUT else f"> {TIMEOUT:.0f} (did not finish)" for m in (m2, m1)]
        print(f"| {condition} | {shown[0]} | {shown[1]} | {m2 / m1:.2f} |", flush=True)


def unloaded(a):
    if not a.old:
        sys.exit("--only unloaded needs --old BIN (an earlier build to compare with)")
    print("| workload | earlier build (s) | this build (s) | ratio this/earlier (median of pairs) |")
    print("|---|---|---|---|")
    for workload in a.workloads:
        for mode in ["profile", "train"]:
            old, new, ratios = [], [], []
            for _ in range(a.rounds):
                o = run_steps([bench_cmd("resprop", workload, mode, a.repeat, None, a.old)])[0]
                n = run_steps([bench_cmd("resprop", workload, mode, a.repeat, None, a.resprop)])[0]
                old.append(o)
                new.append(n)
                ratios.append(n / o)
            print(f"| {workload} {mode} | {statistics.median(old):.4f} | "
                  f"{statistics.median(new):.4f} | {statistics.median(ratios):.3f} |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5, help="timed steps per bench run")
    p.add_argument("--workloads", nargs="+", default=["W1", "W2"])
    p.add_argument("--resprop", default=RESPROP, help="the resprop binary to measure")
    p.add_argument("--torch-python", help="a Python with torch, for PyTorch's figures")
    p.add_argument("--old", help="an earlier resprop binary, for --only unloaded")
    p.add_argument("--only", choices=["pair", "small", "unloaded"], action="append")
    a = p.parse_args()
    for part in a.only or ["pair", "small"] + (["unloaded"] if a.old else []):
        print(f"\n{part}:\n", flush=True)
        {"pair": pair, "small": small, "unloaded": unloaded}[part](a)


if __name__ == "__main__":
    main()
