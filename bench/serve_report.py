"""bench/serve.py's human-readable tables and the performance issue's targets, judged from one run's results."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.serve_runs import Level
from bench.soak import Soak

Target = tuple[str, bool | None, str]  # what, met (None = not measured in this run), the figure


def _level(res: dict[str, Any], streams: int) -> Level | None:
    return next((lv for lv in res.get("levels", []) if lv.streams == streams), None)


def down(x: float, digits: int) -> float:
    """``x`` rounded down to ``digits`` decimals: a figure just under a target never prints as reaching it."""
    return math.floor(x * 10**digits + 1e-9) / 10**digits  # (+1e-9: 0.29 * 100 is 28.999...)


def inter_char_budget_us(step_us: float, message_us: float) -> float:
    """The inter-character target's budget: 1.5 x (one engine step + one message), in µs."""
    return 1.5 * (step_us + message_us)


def batched_x(pairs: Sequence[float], served: float, loop: float) -> float:
    """Batched over the no-batching loop: the median of the level's side-by-side pairs, or else over the one loop."""
    return statistics.median(pairs) if pairs else served / loop


def prompt_x(first_char_ms: float, one_call_ms: float) -> float:
    """The long prompt's first character over one raw prefill call of it."""
    return first_char_ms / one_call_ms


def _floor(res: dict[str, Any]) -> str:
    """The first-character probe's floor, measured between its requests, and what charlm adds over it."""
    if res.get("ttfc16_floor") is None:
        return ""
    floor, prefill = res["ttfc16_floor"].p50, res["ttfc16_prefill"].p50
    return (f"; floor: a bare grpc.aio call whose handler works as long as the raw prefill call (p50 {prefill:.2f} "
            f"ms) answers in p50 {floor:.2f} ms, so charlm adds {res['ttfc16'].p50 - floor:.2f} ms"
            f"{_syscall(res)}")


def _syscall(res: dict[str, Any]) -> str:
    """The null system call's cost measured before the probe, where the run has it (bench.wakeup's)."""
    return f"; a null system call {res['syscall_ns']:.0f} ns then" if res.get("syscall_ns") is not None else ""


def targets(res: dict[str, Any]) -> list[Target]:
    """Each target of the issue as (what, met, figure)."""
    out: list[Target] = []
    lv64, lv1 = _level(res, 64), _level(res, 1)
    if lv64 is not None:
        out.append(("64 streams: served >= 70% of raw engine at batch 64 (goal 85%)", lv64.ratio >= 0.70,
                    f"{down(lv64.ratio * 100, 0):.0f}% ({lv64.served.chars_per_s:,.0f} vs "
                    f"{lv64.engine.chars_per_s:,.0f} chars/s)"))
    else:
        out.append(("64 streams: served >= 70% of raw engine", None, "not run"))
    if "ttfc16" in res:
        p50 = res["ttfc16"].p50
        out.append(("1 stream: TTFC p50 <= 2 ms, 16-char prompt", p50 <= 2.0, f"p50 {p50:.2f} ms, p99 "
                    f"{res['ttfc16'].p99:.2f} ms over {res['ttfc16'].count} requests (of which in the engine: "
                    f"p50 {res['ttfc16_engine'].p50:.2f} ms){_floor(res)}"))  # fmt: skip
    if lv1 is not None and "step1" in res:
        budget_ms = inter_char_budget_us(res["step1"].step_us, res["message_us"]) / 1e3
        p50 = lv1.served.inter_char_ms.p50
        out.append(("1 stream: inter-char p50 <= 1.5 x (engine step + one message)", p50 <= budget_ms,
                    f"p50 {p50 * 1e3:.0f} µs vs 1.5 x ({res['step1'].step_us:.0f} + {res['message_us']:.0f}) = "
                    f"{budget_ms * 1e3:.0f} µs; inter-chunk p50 {lv1.served.inter_chunk_ms.p50 * 1e3:.0f} µs"))
    soak = res.get("soak")
    if isinstance(soak, Soak):
        ok = not soak.errors and soak.settled_growth < 0.05
        out.append((f"{soak.streams} streams for {soak.seconds:.0f} s: no errors, RSS growth < 5%", ok,
                    f"errors {soak.errors or 'none'}, {soak.completed} streams completed in {soak.wall_s:.0f} s, "
                    f"RSS after {soak.warmup_rounds} warm-up rounds at most {soak.rss_warm_high_kib / 1024:.1f} MiB "
                    f"-> median of the last half {soak.rss_settled_kib / 1024:.1f} MiB ({soak.settled_growth:+.1%}); "
                    f"last round {soak.rss_end_kib / 1024:.1f} MiB ({soak.growth:+.1%} on the warm-up's last, "
                    f"{soak.rss_warm_kib / 1024:.1f}); peak {soak.rss_max_kib / 1024:.1f}"))
    base = res.get("baselines")
    if base and lv64 is not None and base[0].streams == 64:
        torch_x = lv64.served.chars_per_s / base[1].chars_per_s if base[1].chars else math.nan
        served = [b for b in base if b.engine.startswith("charlm")]
        served_x = f", {lv64.served.chars_per_s / served[0].chars_per_s:.1f}x this server unbatched" if served else ""
        x = batched_x(lv64.batched, lv64.served.chars_per_s, base[0].chars_per_s)
        if lv64.batched:  # side by side: each pair's served rate over the loop measured right after it
            loop = (f"the median over the level's pairs, each against the loop measured right after it: "
                    f"{', '.join(f'{down(b, 1):.1f}x' for b in lv64.batched)}; against the "
                    f"{base[0].seconds:.0f} s loop after the levels ({base[0].chars_per_s:,.0f} chars/s): "
                    f"{down(lv64.served.chars_per_s / base[0].chars_per_s, 1):.1f}x")  # fmt: skip
        else:
            loop = f"{base[0].chars_per_s:,.0f} chars/s"
        out.append(("64 streams: batched >= 10x the no-batching baseline", x >= 10,
                    f"{down(x, 1):.1f}x onnxruntime unbatched, no transport ({loop}), "
                    f"{torch_x:.0f}x PyTorch eager unbatched{served_x}"))
    if "long_ttfc" in res and "prefill" in res:
        r = prompt_x(res["long_ttfc"].p50, res["prefill"].one_call_ms)
        out.append((f"{res['prefill'].chars}-char prompt: first char <= 5x raw prefill", r <= 5,
                    f"{r:.2f}x (p50 {res['long_ttfc'].p50:.1f} ms, in the engine {res['long_ttfc_engine'].p50:.1f} ms, "
                    f"vs one prefill call {res['prefill'].one_call_ms:.1f} ms)"))
    return out


def _levels_table(levels: list[Level]) -> list[str]:
    head = (f"{'streams':>7} {'served c/s':>11} {'engine c/s':>42} {'ratio':>6} {'TTFC p50/p99 ms':>16} "
            f"{'inter-char p50/p99 ms':>22} {'c/msg':>6} {'srv cpu':>7} {'cli cpu':>7} {'errors':>6}")  # fmt: skip
    lines = [head]
    for lv in levels:
        s = lv.served
        engines = "/".join(f"{r.chars_per_s:,.0f}" for r in lv.engines.values())
        lines.append(f"{lv.streams:>7} {s.chars_per_s:>11,.0f} {engines:>42} {lv.ratio:>6.0%} "
                     f"{s.ttfc_ms.p50:>7.2f}/{s.ttfc_ms.p99:<8.2f} {s.inter_char_ms.p50:>10.3f}/"
                     f"{s.inter_char_ms.p99:<11.3f} {s.chars_per_chunk:>6.1f} {lv.server_cpu_s:>6.1f}s "
                     f"{lv.client_cpu_s:>6.1f}s {sum(s.errors.values()):>6}")  # fmt: skip
    return lines


def _decode_table(levels: list[Level]) -> list[str]:
    """Where each level's gap to the raw engine is, from the server's own decode-call metrics."""
    if not any(lv.decode for lv in levels):
        return []
    lines = ["decode calls during each level (the server's /metrics): lanes busy = call seconds per second of load; "
             "served / raw lanes = busy / lanes x raw / server µs x kept",
             f"{'streams':>7} {'lanes busy':>10} {'server µs/char':>14} {'raw µs/char':>11} {'kept/computed':>13} "
             f"{'cores: loop':>11} {'other srv':>9} {'client':>6} {'waiting: loop':>13} {'other srv':>9} "
             f"{'all streaming':>13} {'ratio then':>10} {'host: idle':>10} {'stolen':>6} "
             f"{'raw stolen':>10}"]  # fmt: skip
    for lv in levels:
        wall = lv.served.wall_s or math.nan
        cores = (lv.loop_cpu_s / wall, (lv.server_cpu_s - lv.loop_cpu_s) / wall, lv.client_cpu_s / wall)
        then = lv.served.all_streaming_chars_per_s / lv.engine.chars_per_s
        lines.append(f"{lv.streams:>7} {lv.busy:>10.2f} {lv.call_us:>14.1f} {lv.lane_us:>11.1f} {lv.kept:>13.3f} "
                     f"{cores[0]:>11.2f} {cores[1]:>9.2f} {cores[2]:>6.2f} {lv.waits_s[0] / wall:>13.2f} "
                     f"{lv.waits_s[1] / wall:>9.2f} {lv.served.all_streaming_s / wall:>13.0%} "
                     f"{then:>10.0%} {lv.host_s[0] / wall:>10.2f} {lv.host_s[1] / wall:>6.2f} "
                     f"{lv.raw_stolen_s / lv.raw_s:>10.2f}")  # fmt: skip
    lines.append("  (µs/char: a decode call's wall time per row-step on its calling thread; raw: the fastest raw "
                 "setting of the kind the server stepped with: lanes side by side where it kept more than one lane "
                 "busy, else one call on all threads; cores: CPU seconds per second of load of the server's event "
                 "loop (its main thread: gRPC's messages), of its other threads (the step threads, gRPC's poller) "
                 "and of the load generator while its streams ran; waiting: seconds per second of load that the "
                 "server's event loop and its other threads were ready to run but waited for a core (/proc "
                 "schedstat): a step thread's call that waits takes longer than a raw lane's; all streaming: the "
                 "share of the load's wall time in which every stream was streaming (after the last one's first "
                 "chunk, before the first one's last), and the served rate then against the same raw engine: the "
                 "gap left without the streams' start and end; host: the "
                 "machine's cores idle and stolen by the VM's host (/proc/stat) during the load, and stolen while "
                 "the raw engine was measured after it: a ratio of a level whose cores the host took is not the "
                 "server's)")  # fmt: skip
    return lines


def report_table(res: dict[str, Any]) -> str:
    """Everything measured, as text."""
    la = ", ".join(f"{x:.2f}" for x in res["load_avg"])
    lines = [f"{res['model']} ({res['shape']}) on {res['nproc']} cores; load average at start {la}; "
             f"{res['chars']} chars per stream; server args {res['server_args'] or 'none'}; decode steps in "
             f"{res.get('precision', 'fp32')}, prompts in {res.get('prompt_precision', 'fp32')} (the server says "
             f"{res.get('server_precision') or '?'})"
             + (f"; lanes measured: {res['lanes']}" if res.get("lanes") else ""), ""]  # fmt: skip
    lines += _levels_table(res.get("levels", []))
    lines.append("  (served: real server process + real clients over loopback; engine: raw onnxruntime steps at "
                 "the same batch, measured right after, each way the server could step it: onnxruntime's threads "
                 "spinning / not, the batch split over one single-threaded lane per core side by side, and both with "
                 "several steps per call; ratio = served / the fastest engine; srv/cli cpu = CPU seconds of the "
                 "server / the load generator during the level)")  # fmt: skip
    levels = [lv for lv in res.get("levels", []) if len(lv.ratios) > 1]
    if res.get("levels"):
        lines.append(f"  (engine c/s: {' / '.join(res['levels'][0].engines)}; the ratio is against the fastest)")
    if levels:
        lines.append(f"  ({len(levels[0].ratios)} (served, engine) pairs per level, the median shown; all ratios: "
                     + "; ".join(f"{lv.streams}: " + ", ".join(f"{r:.0%}" for r in lv.ratios) for lv in levels) + ")")
    lines += _decode_table(res.get("levels", []))
    if "step1" in res:
        lines.append(f"raw step at batch 1: {res['step1'].step_us:.0f} µs; one streamed message on loopback "
                     f"(bare grpc.aio): {res['message_us']:.0f} µs")  # fmt: skip
    for b in res.get("baselines", []):
        rate = f"{b.chars_per_s:,.0f} chars/s" if b.chars else "-"
        lines.append(f"no batching, {b.engine}, {b.streams} streams one call each: {rate} {b.note}".rstrip())
    if "short" in res:
        r = res["short"]
        lines.append(f"short requests: {r.streams} streams x {r.requests_per_stream} one-character requests in turn: "
                     f"{r.requests_per_s:,.0f} requests/s, TTFC p50 {r.ttfc_ms.p50:.1f} ms p99 {r.ttfc_ms.p99:.1f} ms, "
                     f"server CPU {res['short_server_cpu_s'] / max(r.completed, 1) * 1e3:.2f} ms a request, "
                     f"errors {r.errors or 'none'}")  # fmt: skip
    if "soak" in res:
        s = res["soak"]
        lines.append(f"soak: {s.streams} streams x {s.chars} chars, {s.rounds} rounds "
                     f"({s.warmup_rounds} of warm-up) in {s.wall_s:.0f} s "
                     f"({s.chars_per_s:,.0f} chars/s); RSS MiB at start {s.rss_start_kib / 1024:.1f}, after each "
                     f"round {', '.join(f'{r / 1024:.1f}' for r in s.rss_rounds_kib)}; peak "
                     f"{s.rss_max_kib / 1024:.1f}")  # fmt: skip
    lines += ["", "targets:"]
    for what, met, figure in targets(res):
        verdict = "not run" if met is None else "MET" if met else "NOT MET"
        lines.append(f"  [{verdict:>7}] {what}: {figure}")
    la_end = ", ".join(f"{x:.2f}" for x in res["load_avg_end"])
    lines.append(f"load average at end {la_end}")
    return "\n".join(lines)
