"""Render a kalman_speed JSON file as the markdown tables of RESULTS.md."""

import json
import sys
from pathlib import Path


def fmt(seconds):
    return "—" if seconds is None else f"{seconds * 1e3:.2f}"


def main(path):
    doc = json.loads(Path(path).read_text())
    env, rows = doc["environment"], doc["rows"]
    out = [f"Commit `{env['commit']}`, {env['cpu_count']} CPU cores ({env['processor']}), "
           f"backend {env['backend']}, Python {env['python']}; versions "
           + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", ""]
    out += ["| model | T | dyads | tool | value (ms) | value+grad (ms) | compile v+g (s) "
            "| memory v+g (MiB) | abs. log-lik diff vs ours |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["benchmark"] != "kalman_speed":
            continue
        mem = r.get("memory_value_grad_bytes")
        compile_s = r["compile_value_grad_s"]
        out.append(
            f"| {r['model']} | {r['T']} | {r['dyads']} | {r['tool']} | {fmt(r['value_s'])} | "
            f"{fmt(r['value_grad_s'])} | "
            f"{'—' if compile_s is None else f'{compile_s:.1f}'} | "
            f"{'—' if mem is None else f'{mem / 2**20:.1f}'} | {r['loglik_abs_diff_vs_fast']:.1e} |"
        )
    out += ["", "Memory of value + gradient (fast method, oscillator, one series):", "",
            "| T | memory (MiB) | bytes per step | value+grad (ms) |", "|---:|---:|---:|---:|"]
    for r in rows:
        if r["benchmark"] == "kalman_memory":
            out.append(f"| {r['T']} | {r['memory_value_grad_bytes'] / 2**20:.1f} | "
                       f"{r['bytes_per_step']:.0f} | {fmt(r['value_grad_s'])} |")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
