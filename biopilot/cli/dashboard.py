"""The dashboard and who may use it: `dashboard` on a running stack, `token` (create, revoke, login-link) and
the `audit` trail those actions are written to."""

from __future__ import annotations

import argparse
import json
import sys

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, group, lake_of, lake_option, positive, settings_for
from core.config import Settings

ROLES = ["viewer", "operator", "admin"]


def _login_link(settings: Settings, role: str, subject: str) -> str:
    """A one-time login link for the page, its code stored in the stack's cache."""
    from dashboard.auth import LOGIN_CODE_TTL_S, AuthError, issue_login_code

    with user_errors(AuthError):
        code = issue_login_code(settings.redis_url, role, subject)
    return (f"http://{settings.host}:{settings.port}/login?code={code}  "
            f"(one-time login link, {LOGIN_CODE_TTL_S // 60} min)")


def add_dashboard(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "dashboard", cmd_dashboard, "serve the dashboard on a running stack")
    lake_option(p)
    p.add_argument("--cors-origin", action="append", default=None, help="allow this origin (repeatable)")


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the dashboard (REST, SSE, page) against the broker and cache in BIOPILOT_NATS_URL /
    BIOPILOT_REDIS_URL, on BIOPILOT_HOST:BIOPILOT_PORT. Prints a one-time admin login link. CORS is closed
    unless --cors-origin."""
    import uvicorn

    from dashboard.app import create_app

    settings = settings_for(args)
    if not settings.nats_url or not settings.redis_url:
        raise UsageError("biopilot dashboard joins a running stack: set BIOPILOT_NATS_URL and BIOPILOT_REDIS_URL "
                         "(`biopilot up` serves the dashboard itself)")
    app = create_app(settings, cors_origins=args.cors_origin)  # first: it refuses a weak signing key
    print(f"dashboard  {_login_link(settings, 'admin', 'admin')}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


# ---- token --------------------------------------------------------------------------------------------
def _audit(settings: Settings, action: str, target: str, payload: dict, result: str) -> None:
    """An audit row for what the key's holder did here, chained like the dashboard's."""
    import getpass
    import socket
    from datetime import UTC, datetime

    from sinks.audit import AuditLog

    AuditLog(settings.lake).append({
        "ts": datetime.now(UTC), "actor": f"cli:{getpass.getuser()}", "role": "admin", "token_id": None,
        "action": action, "target": target, "payload_json": json.dumps(payload, sort_keys=True),
        "request_id": None, "client": socket.gethostname(), "result": result})


MIN_TOKEN_TTL_S = 60


def add_token_create(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "create", cmd_token_create, "print a signed token for a role")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--subject", default=None, help="who the token is for (written to the audit table)")
    p.add_argument("--ttl-h", type=positive("--ttl-h"), default=None,
                   help="lifetime in hours (default and most: BIOPILOT_TOKEN_TTL_H, 12)")
    lake_option(p)


def cmd_token_create(args: argparse.Namespace) -> int:
    """Print a JWT for viewer (read + streams), operator (+ control, faults, replay) or admin (+ tokens),
    signed with BIOPILOT_SECRET or the key in BIOPILOT_SECRET_FILE (default ~/.config/biopilot/secret),
    audited in the lake. The token alone is on the last line."""
    from dashboard.auth import AuthError, create_token, new_token_id, secret_for

    settings = settings_for(args)
    cap_h = settings.token_ttl_h
    ttl_h = cap_h if args.ttl_h is None else args.ttl_h
    if ttl_h > cap_h:
        raise UsageError(f"--ttl-h {ttl_h:g} is past the cap of {cap_h} h (BIOPILOT_TOKEN_TTL_H)")
    if ttl_h * 3600 < MIN_TOKEN_TTL_S:  # whole seconds: 0.0001 h would mint a token dead on arrival
        raise UsageError(f"--ttl-h {ttl_h:g} is under a minute; the shortest lifetime is "
                         f"{MIN_TOKEN_TTL_S / 3600:.4f} h")
    jti = new_token_id()
    with user_errors(AuthError):
        token = create_token(secret_for(settings), args.role, args.subject, int(ttl_h * 3600), jti=jti)
    _audit(settings, "token_create", jti, {"role": args.role, "subject": args.subject, "ttl_h": ttl_h},
           "minted")
    print(f"{args.role} token {jti}, valid {ttl_h:g} h; send it as 'Authorization: Bearer <token>':",
          file=sys.stderr)
    print(token)
    return 0


def add_token_revoke(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "revoke", cmd_token_revoke, "refuse a token from now on")
    p.add_argument("token", metavar="JTI|TOKEN")
    lake_option(p)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Put a token (given whole, or its id: the jti `create` prints) on the revocation list beside the
    signing key; the dashboard refuses it from its next request. Audited in the lake."""
    from dashboard.auth import AuthError, Revocations, revocation_target, secret_for

    settings = settings_for(args)
    with user_errors(AuthError):
        jti, exp = revocation_target(secret_for(settings), args.token)
    revocations = Revocations.for_settings(settings)
    revocations.add(jti, exp)
    _audit(settings, "token_revoke", jti, {}, "revoked")
    print(f"revoked token {jti} (listed in {revocations.path}; the dashboard refuses it from its next request)")
    return 0


def add_token_login_link(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "login-link", cmd_token_login_link, "print a one-time login link for the page")
    p.add_argument("--role", default="admin", choices=ROLES)
    p.add_argument("--subject", default="admin", help="who signs in (default admin)")


def cmd_token_login_link(args: argparse.Namespace) -> int:
    """A /login?code= link for the stack in BIOPILOT_REDIS_URL: one use, 10 minutes; it sets the page's
    cookie with a token of the role."""
    settings = settings_for(args)
    if not settings.redis_url:
        raise UsageError("a login link needs the stack's cache: set BIOPILOT_REDIS_URL (`biopilot up` prints it)")
    print(_login_link(settings, args.role, args.subject))
    return 0


# ---- audit --------------------------------------------------------------------------------------------
def add_audit_verify(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "verify", cmd_audit_verify, "check that no audit row was removed or edited")
    lake_option(p)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Walk the audit table's hash chain: exit 0 when intact, 1 with the seq of the first break (a removed
    row: a gap; an edited row: a hash mismatch)."""
    from sinks.audit import verify

    verdict = verify(lake_of(args))
    if not verdict.intact:
        print(f"biopilot: audit chain broken: {verdict.message}", file=sys.stderr)
        return 1
    print(verdict.message)
    return 0


def add_audit_tail(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "tail", cmd_audit_tail, "print the newest audit rows")
    p.add_argument("-n", type=positive("-n", int), default=20, help="how many (default 20)")
    lake_option(p)


def cmd_audit_tail(args: argparse.Namespace) -> int:
    """Print the newest audit rows."""
    from sinks.audit import tail

    rows = tail(lake_of(args), args.n)
    if not rows:
        print(f"biopilot: no audit rows in {lake_of(args)}", file=sys.stderr)
    for row in rows:
        seq = "-" if row.get("seq") is None else row["seq"]
        print(f"{seq:>6} {row['ts']:%Y-%m-%d %H:%M:%S} {row['actor']} ({row['role'] or '-'}) {row['action']} "
              f"{row['target'] or '-'} -> {row.get('result') or '-'}  client {row.get('client') or '-'} "
              f"request {row.get('request_id') or '-'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_dashboard(subparsers)
    tokens = group(subparsers, "token", help="dashboard/API tokens", description="Dashboard and API tokens.",
                   metavar="ACTION")
    for add in (add_token_create, add_token_revoke, add_token_login_link):
        add(tokens)
    audit = group(subparsers, "audit", help="the audit trail",
                  description="The dashboard's hash-chained audit table.", metavar="ACTION")
    for add in (add_audit_verify, add_audit_tail):
        add(audit)
