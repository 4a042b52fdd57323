"""Side-by-side timing of resprop and PyTorch on the benchmark workloads of README.md.

Runs `resprop bench` and the PyTorch reference script alternately, ROUNDS times each, so both
see the same machine state; prints a Markdown table of the medians (over rounds) of each
run's median step time, their ratio and the peak RSS. Needs a release build of resprop and a
Python with torch (not a dependency of resprop):

    cargo build --release
    python benches/compare.py --rounds 3 W1:profile W1:train W2:profile W3:train
    python benches/compare.py --precision f32 --rounds 3 W1:profile W2:profile W3:profile
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESPROP = os.path.join(HERE, "..", "target", "release", "resprop")

# workload -> (PyTorch script, its arguments)
PYTORCH = {
    "W1": ("pytorch_mlp.py", ["--units", "100"]),
    "W1b": ("pytorch_mlp.py", ["--units", "1000"]),
    "W2": ("pytorch_resnet.py", ["--net", "resnet110", "--batch", "32"]),
    "W3": ("pytorch_resnet.py", ["--net", "resnet164", "--batch", "16"]),
    "W4": ("pytorch_resnet.py", ["--net", "resnet1001", "--batch", "16"]),
}

LINE = re.compile(r"median ([0-9.]+) s, min ([0-9.]+) s, max ([0-9.]+) s, peak RSS ([0-9]+) MB")


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = LINE.search(out)
    if not m:
        sys.exit(f"no timing line in the output of {' '.join(cmd)}:\n{out}")
    return float(m.group(1)), float(m.group(4))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="+", help="WORKLOAD:MODE, e.g. W2:profile")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=7, help="timed steps per run")
    p.add_argument("--precision", choices=["f32", "f64"], default="f64",
                   help="the element type of both (PyTorch's default dtype)")
    a = p.parse_args()
    print(f"{a.precision}:")
    print("| workload | mode | resprop (s) | PyTorch (s) | ratio | peak RSS resprop / PyTorch (MB) |")
    print("|---|---|---|---|---|---|")
    for case in a.cases:
        workload, mode = case.split(":")
        script, args = PYTORCH[workload]
        ours, theirs = [], []
        for _ in range(a.rounds):
            ours.append(run([RESPROP, "bench", "--workload", workload, "--mode", mode,
                             "--repeat", str(a.repeat), "--precision", a.precision]))
            theirs.append(run([sys.executable, os.path.join(HERE, script), "--mode", mode,
                               "--repeat", str(a.repeat), "--precision", a.precision] + args))
        t_ours = statistics.median(t for t, _ in ours)
        t_theirs = statistics.median(t for t, _ in theirs)
        print(f"| {workload} | {mode} | {t_ours:.3f} | {t_theirs:.3f} | {t_ours / t_theirs:.2f} "
              f"| {max(r for _, r in ours):,.0f} / {max(r for _, r in theirs):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
