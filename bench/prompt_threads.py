"""A prompt call on all of onnxruntime's threads against one thread: wall time and CPU a call, after idle.

The server's prompt calls run on all threads with the second one spinning through the time steps
(``--ort-prefill-spinning``), except a lone row's and, with int8 prompts, a call of at most
``--small-prompt-chars`` (64) characters in all, which run on one thread. This measures why, and where on a
machine a second thread starts to pay (the largest rows x chars whose one-thread wall time is still about all
threads' is a value for that flag): calls of
``rows`` x ``chars`` ids through the server's own prompt sessions (``Runtime.session`` and
``Runtime.small_session``'s kind, one thread), in blocks alternated, each call after ``--idle-ms`` of sleep as a
server's calls come (its threads asleep, its calls going from one session to another). CPU is the whole
process's over a block: the second thread's included.

    python -m bench.prompt_threads --rows 2,4,8,16,32,64 --chars 1,16
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort

from bench.engine import parser
from service.artifact import ArtifactError, load_artifact
from service.runtime import Runtime, RuntimeConfig


def block(session: ort.InferenceSession, rt: Runtime, ids: np.ndarray, calls: int,
          idle_s: float) -> tuple[list[float], float]:  # fmt: skip
    """``calls`` prompt calls of ``ids`` from zero states on ``session``, each after ``idle_s`` of sleep: each
    call's wall seconds, and the process's CPU seconds a call over the block (another thread's CPU whenever it
    ran: read around one call, it came out at up to 25x the call's time, and 0)."""
    states = tuple(np.zeros((rt.layers, ids.shape[0], rt.hidden), np.float32) for _ in rt.state_inputs)
    walls, cpu = [], time.process_time()
    for _ in range(calls):
        time.sleep(idle_s)
        start = time.perf_counter()
        rt.run(ids, states, session)
        walls.append(time.perf_counter() - start)
    return walls, (time.process_time() - cpu) / calls


def measure(rt: Runtime, rows: list[int], chars: list[int], blocks: int, calls: int,
            idle_s: float) -> list[dict[str, float]]:  # fmt: skip
    """Per (chars, rows): the median wall µs of a call and the median over blocks of CPU µs a call, on all
    threads and on one, in blocks of ``calls`` calls alternated."""
    one = rt.lane_prompts() or rt.session  # (a lane's own prompt session: the one-thread kind)
    kinds = {"all": rt.session, "one": one}
    out = []
    for n in chars:
        for k in rows:
            ids = np.random.default_rng(k * 1000 + n).integers(0, rt.vocab_size, (k, n)).astype(np.int64)
            walls: dict[str, list[float]] = {kind: [] for kind in kinds}
            cpus: dict[str, list[float]] = {kind: [] for kind in kinds}
            for session in kinds.values():
                block(session, rt, ids, 1, 0.0)  # warm: this shape's first call
            for _ in range(blocks):
                for kind, session in kinds.items():
                    w, c = block(session, rt, ids, calls, idle_s)
                    walls[kind] += w
                    cpus[kind].append(c)
            row: dict[str, float] = {"rows": k, "chars": n}
            for kind in kinds:
                row[f"{kind}_wall_us"] = statistics.median(walls[kind]) * 1e6
                row[f"{kind}_cpu_us"] = statistics.median(cpus[kind]) * 1e6
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = parser(__doc__)
    p.add_argument("--rows", default="2,4,8,16,32,64", help="comma-separated rows of a call")
    p.add_argument("--chars", default="1,16", help="comma-separated characters a row")
    p.add_argument("--blocks", type=int, default=6, help="blocks of calls of each kind and shape, alternated")
    p.add_argument("--calls", type=int, default=10, help="calls a block")
    p.add_argument("--idle-ms", type=float, default=1.0, help="sleep before each call (the server's threads idle)")
    p.add_argument("--prompt-precision", choices=("auto", "fp32", "int8"), default="auto",
                   help="the prompt calls' LSTM layers, as the server's flag")  # fmt: skip
    a = p.parse_args(argv)
    try:
        rows, chars = [int(x) for x in a.rows.split(",")], [int(x) for x in a.chars.split(",")]
    except ValueError:
        p.error(f"--rows/--chars: {a.rows!r}, {a.chars!r}: comma-separated integers, please")
    try:
        rt = Runtime(load_artifact(a.model), RuntimeConfig(intra_op_threads=a.threads,
                                                           prompt_precision=a.prompt_precision))  # fmt: skip
    except ArtifactError as e:
        p.error(str(e))
    results = measure(rt, rows, chars, a.blocks, a.calls, a.idle_ms / 1e3)
    print(f"{rt.model}: prompts in {rt.prompt_precision}, all = {rt.threads} threads (spinning within the call), "
          f"one = one thread; after {a.idle_ms:g} ms idle; µs a call (wall: median; CPU: median of the blocks); "
          f"the server's int8 prompt calls of at most {rt.small_prompt_chars} characters in all run on one "
          "thread (--small-prompt-chars)")  # fmt: skip
    print("chars  rows   all wall   all CPU   one wall   one CPU   one/all wall")
    for r in results:
        ratio = r["one_wall_us"] / r["all_wall_us"]
        print(f"{r['chars']:5.0f} {r['rows']:5.0f} {r['all_wall_us']:10.0f} {r['all_cpu_us']:9.0f} "
              f"{r['one_wall_us']:10.0f} {r['one_cpu_us']:9.0f} {ratio:14.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
