"""The agents: `diagnose`, `report` and `chat` about a stored run; the `agents` workers on a running stack."""

from __future__ import annotations

import argparse

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import check_folder, command, in_range, lake_of, lake_option
from core.config import load_settings


def add_diagnose(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "diagnose", cmd_diagnose, "incidents and ranked root causes of a stored run")
    p.add_argument("--run", required=True, help="run id (see `biopilot overview`)")
    lake_option(p)
    p.add_argument("--json", action="store_true", help="a JSON list of incidents with hypotheses")


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Monitoring + troubleshooting over a stored run: its ticks are scored as the flow would, alerts
    grouped into incidents, and each incident's causes ranked from the evidence (signal, time, value
    against the golden batch; for a patient run, its vitals, labs, doses and genotype)."""
    from agents.diagnose import RunNotFound, findings_json, format_findings
    from agents.findings import stored_findings

    with user_errors(RunNotFound):
        findings = stored_findings(lake_of(args), args.run)
    print(findings_json(findings) if args.json else format_findings(findings))
    return 0


def add_report(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "report", cmd_report, "batch-record style run report (Markdown, HTML or PDF)")
    p.add_argument("run", help="run id")
    p.add_argument("--format", choices=["md", "html", "pdf"], default="md", help="(default md)")
    p.add_argument("--out", default="reports", help="output folder (default ./reports)")
    lake_option(p)


def cmd_report(args: argparse.Namespace) -> int:
    """Key figures, CPP excursions, incidents with causes and actions, plots of the key signals with
    incidents shaded, and a short summary; for a patient run (the `runs` table's plant), the patient and genotype,
    vitals, labs, doses, time in therapeutic range and the incidents with their causes; for a trial patient's run
    (`trial run --lake`), the trial, arm, patient, endpoints, INRs and doses (a trial has no vitals)."""
    from pathlib import Path

    from agents import patient_report, report
    from agents.diagnose import RunNotFound
    from trials import run_report

    check_folder("--out", args.out, "the folder the report goes in")
    with user_errors(RunNotFound, report.UnsafeRunId):
        report.report_path(Path(args.out), args.run, args.format)  # an id before the lake is read
        trial = run_report.trial_row(lake_of(args), args.run)
        out = (run_report.write(lake_of(args), args.run, args.format, Path(args.out), trial) if trial else
               patient_report.write_run(lake_of(args), args.run, args.format, Path(args.out)))
    print(out)
    return 0


def add_chat(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "chat", cmd_chat, "ask about a stored run, the process, or the next experiments")
    p.add_argument("question")
    p.add_argument("--run", default=None, help="the run asked about (a question about the process or a goal "
                                               "needs none)")
    p.add_argument("--incident", default=None, help="limit the answer to one incident")
    lake_option(p)


def cmd_chat(args: argparse.Namespace) -> int:
    """Answers from the troubleshooting evidence (BIOPILOT_LLM=offline phrases it deterministically;
    openai uses OPENAI_BASE_URL with tool calls); "what raises HCP?" from the knowledge graph; a goal ("maximise
    titer with lactate below 3 g/L") or a what-if through the Experiment Designer."""
    from agents.chat import ask, route
    from agents.diagnose import RunNotFound
    from agents.llm import make_backend

    if args.run is None and route(args.question) == "run":
        raise UsageError("give --run RUN_ID for a question about a run (see `biopilot overview`)")
    with user_errors(RunNotFound):
        for text in ask(lake_of(args), args.run, args.question, make_backend(load_settings()), args.incident):
            print(text, flush=True)
    return 0


def add_agents(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "agents", cmd_agents, "run the agent workers on a running stack")
    p.add_argument("--wait-s", type=in_range("--wait-s", float, 0, 3600, unit=" s"), default=15.0,
                   help="how long to wait for the broker at BIOPILOT_NATS_URL to listen, e.g. while the stack "
                        "starts (default 15)")
    lake_option(p)


def cmd_agents(args: argparse.Namespace) -> int:
    """Monitoring (alerts -> incidents) and troubleshooting (incidents -> streamed explanations) workers
    in NATS queue groups; start several to share the load. For the patient plant (BIOPILOT_PLANT=patient) also
    the live risk scoring: every patient scored at each closed hour, input and outcome drift watched, and the
    risks the live data labels retrained on drift or weekly, in shadow, promoted by rule (the setting
    BIOPILOT_LIVE_RETRAIN_PATIENTS sizes it; 0 turns it off). The risk scoring keeps its own state (alerts, drift,
    samples): run one agents process per patient stack."""
    import asyncio
    import signal

    from agents.llm import make_backend
    from agents.workers import run_workers
    from core.services import without_credentials

    settings = load_settings()
    if not settings.nats_url or not settings.redis_url:
        raise UsageError("biopilot agents joins a running stack: set BIOPILOT_NATS_URL and BIOPILOT_REDIS_URL "
                         "(`biopilot up` starts the workers itself)")

    async def work_until_stopped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"agents: monitoring + troubleshooting on {without_credentials(settings.nats_url)} "
              f"(llm {settings.llm}); Ctrl-C stops", flush=True)
        await run_workers(settings.nats_url, settings.redis_url, lake_of(args), make_backend(settings), stop,
                          broker_wait_s=args.wait_s)

    try:
        asyncio.run(work_until_stopped())
    except TimeoutError as err:  # no broker listening at the URL (`wait_nats` says which, without credentials)
        raise UsageError(f"{err}: is the stack running? BIOPILOT_NATS_URL is the URL `biopilot up` prints") from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for add in (add_diagnose, add_report, add_chat, add_agents):
        add(subparsers)
