"""The `biopilot` command. Every sub-command has `--help`; bad input prints one line and exits with 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from biopilot.config import DetectOptions, SettingsError, load_settings

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2, nothing written."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one `--help` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(name: str, kind: type = float, allow_max: bool = False) -> Callable[[str], float | int | None]:
    """An argparse type: a number > 0 (an integer if `kind` is int), or the word max when `allow_max`."""
    what = ("an integer" if kind is int else "a number") + (" or max" if allow_max else "")

    def parse(text: str) -> float | int | None:
        if allow_max and text == "max":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value
    return parse


def _settings():
    try:
        return load_settings()
    except SettingsError as err:
        raise UsageError(str(err)) from None


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, unless the command prints JSON."""
    def say(msg: str) -> None:
        if not getattr(args, "json", False):
            print(msg, file=sys.stderr, flush=True)
    return say


def _lake(args: argparse.Namespace) -> str:
    return getattr(args, "lake", None) or _settings().lake


# ---- commands -----------------------------------------------------------------------------------------
def cmd_scenarios(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sources.scenarios import builtin_names, load_scenario

    if args.action == "propose":
        from agents.scenario_agent import write

        for path in write(args.n, Path(args.out), args.seed):
            print(f"{path}  (labels: {path.with_suffix('.labels.json').name})")
        return 0
    for name in builtin_names():
        sc = load_scenario(name)
        print(f"{name:28s} {sc.description}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agents.overview import format_table, summarize
    from biopilot.simulate import simulate_to_lake
    from sources.scenarios import ScenarioError, load_scenario

    try:
        scenario = load_scenario(args.scenario)
        if args.days is not None:
            scenario = scenario.with_overrides(days=args.days)
        if args.tick_s is not None:
            scenario = scenario.with_overrides(tick_s=args.tick_s)
    except ScenarioError as err:
        raise UsageError(str(err)) from None
    lake = _lake(args)
    with tqdm(total=args.reactors * scenario.days, unit="reactor-day", desc=f"simulate {scenario.name}",
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        result = simulate_to_lake(scenario, args.reactors, args.seed, lake, progress=bar.update)
    for rid in result.run_ids:
        print(rid)
    if result.skipped:
        print(f"{len(result.skipped)} run(s) already in {lake}: skipped", file=sys.stderr)
    if result.written and not args.quiet:
        print(f"wrote {len(result.written)} run(s), {result.ticks:,} ticks to {lake} in {result.seconds:.1f} s",
              file=sys.stderr)
        if len(result.written) <= 20:
            print(format_table(summarize(lake, result.written)), file=sys.stderr)
    return 0


def cmd_overview(args: argparse.Namespace) -> int:
    from agents.overview import format_table, plot_overview, summarize

    lake = _lake(args)
    summaries = summarize(lake, args.run or None)
    if not summaries:
        raise UsageError(f"no runs in {lake}: run `biopilot simulate` first")
    print(format_table(summaries))
    if args.png:
        path = plot_overview(lake, [s.run_id for s in summaries], args.png)
        print(f"overview picture: {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from biopilot.stack import run_up
    from sources.scenarios import ScenarioError, load_scenario

    if args.plant != "bioreactor":
        raise UsageError(f"--plant {args.plant}: only the bioreactor plant is available in this version")
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as err:
        raise UsageError(str(err)) from None
    settings = _settings()
    if args.lake:
        settings = replace(settings, lake=args.lake)
    if args.port is not None:
        settings = replace(settings, port=args.port)
    from biopilot.services import port_in_use

    if port_in_use(settings.port, settings.host):
        raise UsageError(f"port {settings.port} on {settings.host} is in use: pass --port or set BIOPILOT_PORT")
    return run_up(settings, scenario, args.reactors, args.speed, args.jitter, args.lateness_s, args.batches)


def cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from sinks import delta
    from sources.replay import Replay

    settings = _settings()
    if not settings.nats_url:
        raise UsageError("no broker: set BIOPILOT_NATS_URL (the URL `biopilot up` prints)")
    lake = args.lake or settings.lake
    ticks = delta.read(lake, "ticks", run_ids=[args.run])
    if ticks is None or ticks.num_rows == 0:
        raise UsageError(f"run {args.run!r} has no ticks in {lake}")
    assays = delta.read(lake, "assays", run_ids=[args.run])
    replay = Replay(settings.nats_url, ticks, assays, speed=args.speed, as_run=args.as_run)
    with tqdm(total=ticks.num_rows, unit="tick", desc=f"replay {args.run}", disable=not sys.stderr.isatty()) as bar:
        n = asyncio.run(replay.run(progress=bar.update))
    held = replay.backpressure.held_text()
    print(f"published {n:,} ticks of {args.as_run or args.run}" + (f" ({held})" if held else ""))
    return 0


def cmd_lake_optimize(args: argparse.Namespace) -> int:
    from biopilot.events import SCHEMAS
    from sinks import delta

    lake = _lake(args)
    report = delta.optimize(lake, SCHEMAS)
    if not report:
        raise UsageError(f"no Delta tables in {lake}")
    for name, metrics in report.items():
        print(f"{name:12s} files removed {metrics.get('numFilesRemoved', 0):5d}, "
              f"added {metrics.get('numFilesAdded', 0):4d}")
    return 0


def cmd_bench_simulate(args: argparse.Namespace) -> int:
    from biopilot.bench import simulate as bench

    result = bench.run(reactors=args.reactors, days=args.days, seed=args.seed, lake=args.lake,
                       baseline_reactors=args.baseline_reactors, baseline_days=args.baseline_days,
                       progress=not args.json and sys.stderr.isatty())
    print(json.dumps(bench.as_json(result)) if args.json else bench.format_report(result))
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from biopilot.bench import pipeline as bench

    result = bench.run(ticks=args.ticks, naive_ticks=args.naive_ticks, live_rate=args.live_rate,
                       live_s=args.live_s, soak_s=args.soak_s, keep=args.keep, detector=args.detector,
                       repeats=args.repeats)
    print(json.dumps(bench.as_json(result)) if args.json else bench.format_report(result))
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detectors import external

    try:
        table = external.read_table(args.input, args.sep)
        train_rows = args.train_rows
        if args.train_file:
            train = external.read_table(args.train_file, args.sep)
            try:
                table = pa.concat_tables([train.select(table.column_names), table])
            except (KeyError, pa.ArrowInvalid) as err:
                raise external.InputError(f"--train-file columns do not match the input: {err}") from None
            train_rows = train.num_rows
        result = external.score(table, args.time_col, args.detectors.split(","), train_rows, args.label_col,
                                set(args.ignore_cols.split(",")) if args.ignore_cols else set(), _detect_options(args))
    except external.InputError as err:
        raise UsageError(str(err)) from None
    out = result.table.slice(train_rows) if args.train_file else result.table  # the user's rows only
    pq.write_table(out, args.out)
    if result.left_out:
        print(f"left out {len(result.left_out)} signal(s) whose level wanders on the training rows "
              f"(roughness < {args.min_roughness}): {', '.join(result.left_out)}; keep them with --min-roughness 0")
    alarms = int(pa.compute.sum(out["is_alarm"]).as_py() or 0)
    print(f"scored {out.num_rows:,} rows with {args.detectors} -> {args.out} ({alarms:,} alarm rows)")
    if result.metrics:
        m = result.metrics
        print(f"F1 {m['f1']:.3f}  FAR {m['far_pct']:.2f} %  MAR {m['mar_pct']:.2f} %  (rows after the training part)")
    return 0


def cmd_bench_skab(args: argparse.Namespace) -> int:
    from detectors import external

    try:
        files = external.skab_files(args.data)
    except external.InputError as err:
        raise UsageError(str(err)) from None
    options = _detect_options(args)
    rows = []
    for combo in args.detectors:
        rows.append({"detectors": combo, "files": len(files), **asdict(options),
                     **external.skab(files, combo.split(","), options)})
    checks = []
    if args.cross_check:
        grid = {"smooth_rows": (5, 10, 20, 30), "min_roughness": (0.4, 0.5, 0.6), "margin": (1.5, 2.0, 2.5, 3.0)}
        checks = external.skab_cross_check(args.data, grid, ["pca"], progress=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps({"results": rows, "cross_check": checks}))
        return 0
    print(f"{len(files)} files; smooth_rows {args.smooth_rows}, min_roughness {args.min_roughness}, "
          f"margin {args.margin}\n")
    print("| detectors | F1 | FAR % | MAR % |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['detectors']} | {r['f1']:.3f} | {r['far_pct']:.2f} | {r['mar_pct']:.2f} |")
    if checks:
        print("\n| settings chosen on | settings | F1 / FAR there | tested on | F1 | FAR % | MAR % |\n"
              "|---|---|---|---|---|---|---|")
        for c in checks:
            a, b = c["chosen_on_metrics"], c["tested_on_metrics"]
            settings = ", ".join(f"{k} {v}" for k, v in c["settings"].items())
            print(f"| {c['chosen_on']} | {settings} | {a['f1']:.3f} / {a['far_pct']:.1f} % | {c['tested_on']} "
                  f"| {b['f1']:.3f} | {b['far_pct']:.2f} | {b['mar_pct']:.2f} |")
    return 0


def cmd_bench_detectors(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detectors import benchmark as bench

    say = _progress(args)

    results = bench.run(seeds=args.seeds, normal_runs=args.normal_runs, calibration_runs=args.calibration_runs,
                        grace_h=args.grace_h, with_speed=args.speed,
                        only=args.only.split(",") if args.only else None, progress=say)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detectors.md").write_text(bench.markdown(results) + "\n")
    (out / "detectors.json").write_text(json.dumps(bench.as_json(results), indent=2) + "\n")
    bench.chart(results, out / "detectors.png")
    print(json.dumps(bench.as_json(results)) if args.json else bench.markdown(results))
    say(f"written: {out / 'detectors.md'}, {out / 'detectors.json'}, {out / 'detectors.png'}")
    return 0


def _run_findings(args: argparse.Namespace):  # noqa: ANN202
    from agents.diagnose import RunNotFound, diagnose_stored

    try:
        return diagnose_stored(_lake(args), args.run)
    except RunNotFound as err:
        raise UsageError(str(err)) from None


def cmd_diagnose(args: argparse.Namespace) -> int:
    from agents.diagnose import findings_json, format_findings

    findings = _run_findings(args)
    print(findings_json(findings) if args.json else format_findings(findings))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agents import report
    from agents.diagnose import RunNotFound

    try:
        out = report.write(_lake(args), args.run, args.format, Path(args.out))
    except (RunNotFound, report.UnsafeRunId) as err:
        raise UsageError(str(err)) from None
    print(out)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from agents.chat import ask
    from agents.diagnose import RunNotFound
    from agents.llm import make_backend

    try:
        for text in ask(_lake(args), args.run, args.question, make_backend(_settings()), args.incident):
            print(text, flush=True)
    except RunNotFound as err:
        raise UsageError(str(err)) from None
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from agents.llm import make_backend
    from agents.workers import run_workers

    settings = _settings()
    if not settings.nats_url or not settings.redis_url:
        raise UsageError("biopilot agents joins a running stack: set BIOPILOT_NATS_URL and BIOPILOT_REDIS_URL "
                         "(`biopilot up` starts the workers itself)")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from biopilot.services import without_credentials

        print(f"agents: monitoring + troubleshooting on {without_credentials(settings.nats_url)} "
              f"(llm {settings.llm}); Ctrl-C stops",
              flush=True)
        await run_workers(settings.nats_url, settings.redis_url, _lake(args), make_backend(settings), stop)

    asyncio.run(main())
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import uvicorn

    from dashboard.app import create_app

    settings = _settings()
    if args.lake:
        settings = replace(settings, lake=args.lake)
    if not settings.nats_url or not settings.redis_url:
        raise UsageError("biopilot dashboard joins a running stack: set BIOPILOT_NATS_URL and BIOPILOT_REDIS_URL "
                         "(`biopilot up` serves the dashboard itself)")
    app = create_app(settings, cors_origins=args.cors_origin)  # first: it refuses a weak signing key
    print(f"dashboard  {_login_link(settings, 'admin', 'admin')}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def cmd_bench_sse(args: argparse.Namespace) -> int:
    from biopilot.bench import sse

    say = _progress(args)

    res = sse.run(args.clients, args.slow, args.duration_s, say=say)
    print(json.dumps(sse.as_json(res)) if args.json else sse.format_report(res))
    return 0


def cmd_train_scorer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detectors.train_scorer import train

    say = _progress(args)

    metrics = train(args.runs_per_fault, args.normal_runs, args.val_runs, args.epochs, args.stride,
                    device=args.device, out=Path(args.out), seed=args.seed, progress=say)
    print(json.dumps(metrics, indent=2))
    return 0


def _token_settings(args: argparse.Namespace):  # noqa: ANN202 - Settings, imported lazily
    from dataclasses import replace

    settings = _settings()
    return replace(settings, lake=args.lake) if getattr(args, "lake", None) else settings


def _cli_audit(settings, action: str, target: str, payload: dict, result: str) -> None:  # noqa: ANN001
    """An audit row for what the key's holder did here, chained like the dashboard's."""
    import getpass
    import socket
    from datetime import UTC, datetime

    from sinks.audit import AuditLog

    AuditLog(settings.lake).append({
        "ts": datetime.now(UTC), "actor": f"cli:{getpass.getuser()}", "role": "admin", "token_id": None,
        "action": action, "target": target, "payload_json": json.dumps(payload, sort_keys=True),
        "request_id": None, "client": socket.gethostname(), "result": result})


def cmd_token_create(args: argparse.Namespace) -> int:
    from dashboard.auth import AuthError, create_token, new_token_id, secret_for

    settings = _token_settings(args)
    cap_h = settings.token_ttl_h
    ttl_h = cap_h if args.ttl_h is None else args.ttl_h
    if ttl_h > cap_h:
        raise UsageError(f"--ttl-h {ttl_h:g} is past the cap of {cap_h} h (BIOPILOT_TOKEN_TTL_H)")
    jti = new_token_id()
    try:
        token = create_token(secret_for(settings), args.role, args.subject, int(ttl_h * 3600), jti=jti)
    except AuthError as err:
        raise UsageError(str(err)) from None
    _cli_audit(settings, "token_create", jti, {"role": args.role, "subject": args.subject, "ttl_h": ttl_h},
               "minted")
    print(f"{args.role} token {jti}, valid {ttl_h:g} h; send it as 'Authorization: Bearer <token>':",
          file=sys.stderr)
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from dashboard.auth import AuthError, Revocations, revocation_target, secret_for

    settings = _token_settings(args)
    try:
        jti, exp = revocation_target(secret_for(settings), args.token)
    except AuthError as err:
        raise UsageError(str(err)) from None
    revocations = Revocations.for_settings(settings)
    revocations.add(jti, exp)
    _cli_audit(settings, "token_revoke", jti, {}, "revoked")
    print(f"revoked token {jti} (listed in {revocations.path}; the dashboard refuses it from its next request)")
    return 0


def _login_link(settings, role: str, subject: str) -> str:  # noqa: ANN001 - Settings
    """A one-time login link for the page, its code stored in the stack's cache."""
    from dashboard.auth import LOGIN_CODE_TTL_S, AuthError, issue_login_code

    try:
        code = issue_login_code(settings.redis_url, role, subject)
    except AuthError as err:
        raise UsageError(str(err)) from None
    return (f"http://{settings.host}:{settings.port}/login?code={code}  "
            f"(one-time login link, {LOGIN_CODE_TTL_S // 60} min)")


def cmd_token_login_link(args: argparse.Namespace) -> int:
    settings = _token_settings(args)
    if not settings.redis_url:
        raise UsageError("a login link needs the stack's cache: set BIOPILOT_REDIS_URL (`biopilot up` prints it)")
    print(_login_link(settings, args.role, args.subject))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from sinks.audit import verify

    verdict = verify(_lake(args))
    if not verdict.intact:
        print(f"biopilot: audit chain broken: {verdict.message}", file=sys.stderr)
        return 1
    print(verdict.message)
    return 0


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from sinks.audit import tail

    for row in tail(_lake(args), args.n):
        seq = "-" if row.get("seq") is None else row["seq"]
        print(f"{seq:>6} {row['ts']:%Y-%m-%d %H:%M:%S} {row['actor']} ({row['role'] or '-'}) {row['action']} "
              f"{row['target'] or '-'} -> {row.get('result') or '-'}  client {row.get('client') or '-'} "
              f"request {row.get('request_id') or '-'}")
    return 0


def cmd_bench_agents(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agents import benchmark as bench

    say = _progress(args)

    res = bench.run(args.seeds, args.normal_runs, args.latency_alerts, progress=say)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents.md").write_text(bench.markdown(res) + "\n")
    (out / "agents.json").write_text(json.dumps(res.as_json(), indent=2) + "\n")
    print(json.dumps(res.as_json()) if args.json else bench.markdown(res))
    return 0


# ---- parser -------------------------------------------------------------------------------------------
def _lake_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=None, help="Delta root (default: BIOPILOT_LAKE or ./lake)")


def _conditioning_options(p: argparse.ArgumentParser) -> None:
    d = DetectOptions()
    p.add_argument("--smooth-rows", type=_positive("--smooth-rows", int), default=d.smooth_rows,
                   help=f"causal EWMA span applied to every signal first; 1 = none (default {d.smooth_rows})")
    p.add_argument("--min-roughness", type=float, default=d.min_roughness,
                   help="leave out signals whose level wanders on the training rows: roughness = sd(differences) / "
                        f"(sqrt 2 sd) below this; 0 keeps every signal (default {d.min_roughness})")
    p.add_argument("--margin", type=_positive("--margin"), default=d.margin,
                   help=f"alarm threshold = this x the highest score held on the training rows (default {d.margin})")


def _detect_options(args: argparse.Namespace) -> DetectOptions:
    return DetectOptions(smooth_rows=args.smooth_rows, min_roughness=args.min_roughness, margin=args.margin)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="biopilot",
        description="BioPilot: a streaming digital twin for CHO fed-batch biomanufacturing. "
                    "Settings come from BIOPILOT_* variables, then biopilot.toml, then defaults.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("scenarios", help="list the built-in scenarios, or propose composite ones",
                       description="`biopilot scenarios` lists the built-in scenarios, one line each. "
                                   "`biopilot scenarios propose` has the scenario agent write realistic composite "
                                   "fault scenarios (TOML for `biopilot simulate --scenario FILE`) with their "
                                   "expected labels.")
    p.add_argument("action", nargs="?", choices=["list", "propose"], default="list")
    p.add_argument("--n", type=_positive("--n", int), default=3, help="how many to propose (default 3)")
    p.add_argument("--out", default="scenarios", help="folder for proposed scenarios (default ./scenarios)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the proposals (default 0)")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("diagnose", help="incidents and ranked root causes of a stored run",
                       description="Monitoring + troubleshooting over a stored run: its ticks are scored as the "
                                   "flow would, alerts grouped into incidents, and each incident's causes ranked "
                                   "from the evidence (signal, time, value against the golden batch).")
    p.add_argument("--run", required=True, help="run id (see `biopilot overview`)")
    _lake_option(p)
    p.add_argument("--json", action="store_true", help="a JSON list of incidents with hypotheses")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("report", help="batch-record style run report (Markdown, HTML or PDF)",
                       description="Key figures, CPP excursions, incidents with causes and actions, plots of the "
                                   "key signals with incidents shaded, and a short summary.")
    p.add_argument("run", help="run id")
    p.add_argument("--format", choices=["md", "html", "pdf"], default="md")
    p.add_argument("--out", default="reports", help="output folder (default ./reports)")
    _lake_option(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("chat", help="ask a question about a stored run",
                       description="Answers from the troubleshooting evidence (BIOPILOT_LLM=offline phrases it "
                                   "deterministically; openai uses OPENAI_BASE_URL with tool calls).")
    p.add_argument("question")
    p.add_argument("--run", required=True)
    p.add_argument("--incident", default=None, help="limit the answer to one incident")
    _lake_option(p)
    p.set_defaults(func=cmd_chat)

    train = sub.add_parser("train", help="train the learned detectors", description="Train the learned detectors.")
    train_sub = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    p = train_sub.add_parser("scorer", help="the windowed Transformer/BiLSTM scorer on simulated runs",
                             description="Simulate labelled runs (every archetype, the composite, normal runs), "
                                         "train the windowed scorer, print held-out metrics, write the checkpoint "
                                         "the `transformer` detector loads.")
    p.add_argument("--runs-per-fault", type=_positive("--runs-per-fault", int), default=4)
    p.add_argument("--normal-runs", type=_positive("--normal-runs", int), default=12)
    p.add_argument("--val-runs", type=_positive("--val-runs", int), default=1, help="held-out runs per scenario")
    p.add_argument("--epochs", type=_positive("--epochs", int), default=6)
    p.add_argument("--stride", type=_positive("--stride", int), default=16, help="window spacing outside faults")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent.parent / "detectors" / "scorer.pt"),
                   help="checkpoint path (default: the one the package ships)")
    p.set_defaults(func=cmd_train_scorer)

    token = sub.add_parser("token", help="dashboard/API tokens", description="Dashboard and API tokens.")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = token_sub.add_parser("create", help="print a signed token for a role",
                             description="Print a JWT for viewer (read + streams), operator (+ control, faults, "
                                         "replay) or admin (+ tokens), signed with BIOPILOT_SECRET or the key in "
                                         "BIOPILOT_SECRET_FILE (default ~/.config/biopilot/secret), audited in the "
                                         "lake. The token alone is on the last line.")
    p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    p.add_argument("--subject", default=None, help="who the token is for (written to the audit table)")
    p.add_argument("--ttl-h", type=_positive("--ttl-h"), default=None,
                   help="lifetime in hours (default and most: BIOPILOT_TOKEN_TTL_H, 12)")
    _lake_option(p)
    p.set_defaults(func=cmd_token_create)
    p = token_sub.add_parser("revoke", help="refuse a token from now on",
                             description="Put a token (given whole, or its id: the jti `create` prints) on the "
                                         "revocation list beside the signing key; the dashboard refuses it from its "
                                         "next request. Audited in the lake.")
    p.add_argument("token", metavar="JTI|TOKEN")
    _lake_option(p)
    p.set_defaults(func=cmd_token_revoke)
    p = token_sub.add_parser("login-link", help="print a one-time login link for the page",
                             description="A /login?code= link for the stack in BIOPILOT_REDIS_URL: one use, "
                                         "10 minutes; it sets the page's cookie with a token of the role.")
    p.add_argument("--role", default="admin", choices=["viewer", "operator", "admin"])
    p.add_argument("--subject", default="admin", help="who signs in (default admin)")
    p.set_defaults(func=cmd_token_login_link)

    audit = sub.add_parser("audit", help="the audit trail", description="The dashboard's hash-chained audit table.")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = audit_sub.add_parser("verify", help="check that no audit row was removed or edited",
                             description="Walk the audit table's hash chain: exit 0 when intact, 1 with the seq of "
                                         "the first break (a removed row: a gap; an edited row: a hash mismatch).")
    _lake_option(p)
    p.set_defaults(func=cmd_audit_verify)
    p = audit_sub.add_parser("tail", help="print the newest audit rows", description="Print the newest audit rows.")
    p.add_argument("-n", type=_positive("-n", int), default=20, help="how many (default 20)")
    _lake_option(p)
    p.set_defaults(func=cmd_audit_tail)

    p = sub.add_parser("dashboard", help="serve the dashboard on a running stack",
                       description="Serve the dashboard (REST, SSE, page) against the broker and cache in "
                                   "BIOPILOT_NATS_URL / BIOPILOT_REDIS_URL, on BIOPILOT_HOST:BIOPILOT_PORT. "
                                   "Prints a one-time admin login link. CORS is closed unless --cors-origin.")
    _lake_option(p)
    p.add_argument("--cors-origin", action="append", default=None, help="allow this origin (repeatable)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("agents", help="run the agent workers on a running stack",
                       description="Monitoring (alerts -> incidents) and troubleshooting (incidents -> streamed "
                                   "explanations) workers in NATS queue groups; start several to share the load.")
    _lake_option(p)
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("simulate", help="simulate a fleet into Delta tables",
                       description="Simulate N reactors of a scenario and write the Delta tables runs, ticks, "
                                   "assays and labels. Run ids are deterministic: a rerun adds nothing. "
                                   "Prints the run ids.")
    p.add_argument("--scenario", default="normal", help="built-in name (see `biopilot scenarios`) or a TOML file")
    p.add_argument("--reactors", type=_positive("--reactors", int), default=1, help="number of reactors (default 1)")
    p.add_argument("--days", type=_positive("--days"), default=None, help="run length (default: scenario's)")
    p.add_argument("--tick-s", type=_positive("--tick-s"), default=None,
                   help="seconds of process time per tick, 1-3600 (default: scenario's, 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _lake_option(p)
    p.add_argument("--quiet", action="store_true", help="print only the run ids")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("overview", help="summary table and picture of stored runs",
                       description="Print peak VCD, final titer, HCP and faults per run; optionally draw the key "
                                   "signals with fault windows shaded.")
    _lake_option(p)
    p.add_argument("--run", action="append", help="a run id (repeatable; default: all runs)")
    p.add_argument("--png", default=None, help="write the picture here")
    p.set_defaults(func=cmd_overview)

    p = sub.add_parser("up", help="start the whole stack (broker, flow, plant, agents, dashboard)",
                       description="Start the embedded broker and cache (unless BIOPILOT_NATS_URL / "
                                   "BIOPILOT_REDIS_URL are set), the monitoring flow, the plant feed, the agent "
                                   "workers and the dashboard; prints a one-time admin login link. "
                                   "Ctrl-C stops everything.")
    p.add_argument("--reactors", type=_positive("--reactors", int), default=4)
    p.add_argument("--speed", type=_positive("--speed", allow_max=True), default=600.0,
                   help="simulated seconds per wall second, or max (default 600; the plant waits while the "
                        "flow is more than 1 GB behind)")
    p.add_argument("--plant", choices=["bioreactor", "patient"], default="bioreactor")
    p.add_argument("--scenario", default="normal", help="scenario of every batch (default normal)")
    p.add_argument("--jitter", type=float, default=0.0, help="share of ticks delivered out of order (0-1)")
    p.add_argument("--port", type=_positive("--port", int), default=None,
                   help="dashboard port (default BIOPILOT_PORT or 8000)")
    p.add_argument("--lateness-s", type=_positive("--lateness-s"), default=300.0,
                   help="allowed event-time lateness before a tick is late (default 300)")
    p.add_argument("--batches", type=_positive("--batches", int), default=None,
                   help="stop after this many batches (default: run until Ctrl-C)")
    _lake_option(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("replay", help="publish a stored run to NATS",
                       description="Publish a stored run's ticks (event-time spacing divided by --speed) and "
                                   "assays to the broker in BIOPILOT_NATS_URL. While it runs, "
                                   'biopilot.control.<reactor> takes {"type": "pause"|"resume"|"stop"}. '
                                   "It waits while the monitoring flow is more than 1 GB behind, so the broker "
                                   "never drops what the flow has not read (not for a flow that has stopped).")
    p.add_argument("--run", required=True, help="run id (see `biopilot overview`)")
    p.add_argument("--speed", type=_positive("--speed", allow_max=True), default=600.0,
                   help="speed factor or max (default 600)")
    p.add_argument("--as-run", default=None, help="publish under another run id (the lake keeps one copy per id)")
    _lake_option(p)
    p.set_defaults(func=cmd_replay)

    lake = sub.add_parser("lake", help="Delta table maintenance", description="Delta table maintenance.")
    lake_sub = lake.add_subparsers(dest="lake_command", metavar="ACTION", required=True)
    p = lake_sub.add_parser("optimize", help="compact small files",
                            description="Compact every table's files into ~100 MB ones and delete the files no "
                                        "longer referenced, at once (stop readers first). Running writers (the "
                                        "flow, the agents) already merge their own tables' small files every "
                                        "100 commits and delete what they replaced an hour later.")
    _lake_option(p)
    p.set_defaults(func=cmd_lake_optimize)

    p = sub.add_parser("detect", help="score your own CSV/Parquet time series",
                       description="Score a multivariate time series (e.g. a historian export): the output keeps "
                                   "the time column and adds one score column per detector, the fused score and "
                                   "is_alarm. Detectors learn in time order; thresholds and reference models come "
                                   "from the training rows. With --label-col, prints F1, FAR and MAR.")
    p.add_argument("--input", required=True, help="a .csv or .parquet file")
    p.add_argument("--time-col", required=True, help="the time column (kept as is)")
    p.add_argument("--sep", default=",", help="CSV separator (default ,)")
    p.add_argument("--label-col", default=None, help="0/1 anomaly labels, for metrics")
    p.add_argument("--ignore-cols", default="", help="comma-separated columns that are not signals")
    p.add_argument("--train-rows", type=_positive("--train-rows", int), default=400,
                   help="the first N rows are normal operation (default 400)")
    p.add_argument("--train-file", default=None, help="normal-operation data in a separate file instead")
    p.add_argument("--detectors", default="pca,zscore", help="comma-separated (default pca,zscore)")
    _conditioning_options(p)
    p.add_argument("--out", required=True, help="output .parquet")
    p.set_defaults(func=cmd_detect)

    bench = sub.add_parser("bench", help="measured figures, each beside its baseline",
                           description="Benchmarks; each prints ours beside a baseline measured in the same run.")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = bench_sub.add_parser("simulate", help="fleet simulation into Delta vs a per-reactor solve_ivp loop",
                             description="Simulate a fleet (noise, assays, faults) into Delta and time a "
                                         "per-reactor scipy solve_ivp loop of the same model on a sample.")
    p.add_argument("--reactors", type=_positive("--reactors", int), default=1000)
    p.add_argument("--days", type=_positive("--days"), default=14.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--lake", default=None, help="keep the tables here (default: a temporary directory)")
    p.add_argument("--baseline-reactors", type=_positive("--baseline-reactors", int), default=2)
    p.add_argument("--baseline-days", type=_positive("--baseline-days"), default=1.0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench_simulate)
    p = bench_sub.add_parser("pipeline", help="streaming throughput and latency vs a bare copy and a naive flow",
                             description="Throughput of (a) a bare NATS->Delta copy, (b) our flow, (c) a naive "
                                         "per-event JSON + River HST flow; latency at a live rate; flow memory "
                                         "over a soak at full rate.")
    p.add_argument("--ticks", type=_positive("--ticks", int), default=2_000_000,
                   help="ticks published for the floor and for our flow (default 2,000,000)")
    p.add_argument("--naive-ticks", type=_positive("--naive-ticks", int), default=20_000,
                   help="ticks for the naive flow, which is ~300x slower (default 20,000)")
    p.add_argument("--live-rate", type=_positive("--live-rate"), default=10_000.0,
                   help="ticks/s for the latency phase (default 10,000)")
    p.add_argument("--live-s", type=_positive("--live-s"), default=60.0,
                   help="seconds of each latency phase (default 60: ~250 alerts with the fusion, three faults "
                        "per reactor)")
    p.add_argument("--soak-s", type=_positive("--soak-s"), default=300.0,
                   help="seconds of the memory soak at full rate (default 300)")
    p.add_argument("--detector", choices=["fusion", "zscore"], default="fusion",
                   help="what our flow runs: the calibrated fusion (default, what `biopilot up` runs) or the "
                        "streaming z-score alone")
    p.add_argument("--repeats", type=_positive("--repeats", int), default=3,
                   help="throughput runs of the floor and of our flow, in turns; their medians are reported, as "
                        "one run on a shared 2-core machine can be off by 20 %% (default 3)")
    p.add_argument("--keep", default=None, help="keep brokers' data, lakes and logs in this directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench_pipeline)
    p = bench_sub.add_parser("detectors", help="detection quality of every detector on a labelled twin suite",
                             description="Every fault archetype x seeds, composites and normal runs from the twin; "
                                         "thresholds calibrated on separate normal runs. Writes Markdown, JSON "
                                         "and a PNG chart, and the fusion calibration the flow uses.")
    p.add_argument("--seeds", type=_positive("--seeds", int), default=5)
    p.add_argument("--normal-runs", type=_positive("--normal-runs", int), default=20)
    p.add_argument("--calibration-runs", type=_positive("--calibration-runs", int), default=10)
    p.add_argument("--grace-h", type=float, default=2.0, help="hours after a fault's end still counted as inside")
    p.add_argument("--speed", action="store_true", help="also each detector's ticks/s at 12 signals")
    p.add_argument("--only", default=None, help="comma-separated detectors to evaluate (default: all)")
    p.add_argument("--out", default="docs/quality", help="where to write detectors.md/.json/.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench_detectors)
    p = bench_sub.add_parser("agents", help="root-cause accuracy and alert -> first chunk latency",
                             description="Monitoring + troubleshooting over a labelled twin suite (top-1/top-3 per "
                                         "archetype, abstentions, incidents on normal runs) and the live latency "
                                         "from an alert to the first explanation chunk.")
    p.add_argument("--seeds", type=_positive("--seeds", int), default=5, help="runs per archetype (default 5)")
    p.add_argument("--normal-runs", type=_positive("--normal-runs", int), default=10)
    p.add_argument("--latency-alerts", type=int, default=200, help="alerts for the latency part (0 skips it)")
    p.add_argument("--out", default="docs/quality", help="where agents.md/json go (default docs/quality)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_agents)
    p = bench_sub.add_parser("sse", help="the dashboard under 200 SSE clients, 20 slow",
                             description="Clients hold telemetry and alert streams at live rate; measures events/s, "
                                         "alert latency on the fast clients (beside bare NATS), server RSS, errors.")
    p.add_argument("--clients", type=_positive("--clients", int), default=200)
    p.add_argument("--slow", type=int, default=20, help="how many of them read slowly (default 20)")
    p.add_argument("--duration-s", type=_positive("--duration-s"), default=60.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_sse)
    p = bench_sub.add_parser("skab", help="`biopilot detect` on SKAB with the leaderboard's protocol",
                             description="Every anomalous SKAB file: train on the first 400 rows, score the rest, "
                                         "F1/FAR/MAR over all test rows (the public leaderboard's protocol).")
    p.add_argument("--data", default="../shared/data/skab", help="the SKAB folder (default ../shared/data/skab)")
    p.add_argument("--detectors", nargs="+", default=["pca", "pca,zscore", "pca,zscore,ewma", "iforest"],
                   help="detector sets to evaluate, each comma-separated")
    _conditioning_options(p)
    p.add_argument("--cross-check", action="store_true",
                   help="also pick settings on half the files and score the other half with them (a few minutes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_skab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, SettingsError) as err:  # SettingsError: also a bad signing key (dashboard.auth)
        print(f"biopilot: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except tomllib.TOMLDecodeError as err:
        print(f"biopilot: error: invalid TOML: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
