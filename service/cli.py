"""Ops commands: `tollgate seed-models | db upgrade | holds reap | accounts | tokens | keys | demo`
(`tollgate` is installed with the package; `flask --app wsgi …` runs the same commands)."""
from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from service import seed
from service.money import billing
from service.store import migrations
from service.store.db import AIModel, Account
from service.web import auth
from service.web.account import account_body
from service.web.errors import GatewayError

db_cli = AppGroup("db", help="Database schema.")
holds_cli = AppGroup("holds", help="Credit holds.")
accounts_cli = AppGroup("accounts", help="Credit accounts.")
tokens_cli = AppGroup("tokens", help="JWTs for accounts.")
keys_cli = AppGroup("keys", help="API keys.")


def _fail(err: GatewayError):
    click.echo(f"error: {err.message}", err=True)
    sys.exit(1)


@click.command("seed-models")
@with_appcontext
@click.option("--file", "path", default=None, help="catalogue TOML (default MODELS_FILE)")
def seed_models(path):
    """Upsert the catalogue file into the database (all rows or none)."""
    path = path or current_app.config["MODELS_FILE"]
    try:
        created, updated = seed.upsert(seed.load_file(path))
    except GatewayError as err:
        _fail(err)
    current_app.extensions["tollgate"].registry.invalidate()
    click.echo(f"catalogue {path}: {created} created, {updated} updated")


@db_cli.command("upgrade")
def db_upgrade():
    """Apply pending schema versions."""
    applied = migrations.upgrade()
    click.echo(f"schema at version {migrations.current_version()}"
               + (f" (applied {applied})" if applied else " (nothing to do)"))


@holds_cli.command("reap")
def holds_reap():
    """Release holds past their expiry."""
    click.echo(f"released {billing.reap()} expired holds")


@accounts_cli.command("create")
@click.argument("name")
@click.option("--credits", default="0", help="initial credits")
def accounts_create(name, credits):
    try:
        acct = billing.account(name)
        amount = billing.to_micro(credits)
        if amount:
            acct = billing.credit(acct.id, amount, "created from the command line")
    except GatewayError as err:
        _fail(err)
    click.echo(account_body(acct))


@accounts_cli.command("topup")
@click.argument("name")
@click.argument("amount")
@click.option("--note", default=None)
def accounts_topup(name, amount, note):
    try:
        acct = billing.account(name)
        click.echo(account_body(billing.credit(acct.id, billing.to_micro(amount), note)))
    except GatewayError as err:
        _fail(err)


@accounts_cli.command("show")
@click.argument("name")
def accounts_show(name):
    acct = Account.get_or_none(Account.name == name)
    if acct is None:
        click.echo(f"error: no account named {name}", err=True)
        sys.exit(1)
    click.echo(account_body(acct))


@tokens_cli.command("issue")
@click.argument("name")
@click.option("--admin", is_flag=True, help="grant the admin role")
@click.option("--expires-in", default=86400, type=int, help="seconds; 0 for no expiry (accepted only with JWT_ALLOW_NO_EXP=true)")
def tokens_issue(name, admin, expires_in):
    """Print an HS256 JWT for NAME."""
    if not current_app.config.get("JWT_SECRET_KEY"):
        click.echo("error: tokens can be issued only with an HS256 JWT_SECRET_KEY", err=True)
        sys.exit(1)
    click.echo(auth.issue_token(name, admin, expires_in or None))


@keys_cli.command("create")
@click.argument("name")
@click.option("--label", default=None)
@click.option("--rpm", default=None, type=int)
def keys_create(name, label, rpm):
    """Create an API key for account NAME and print it (shown this once)."""
    row, plain = auth.create_key(billing.account(name), label, rpm)
    click.echo(f"id {row.id}: {plain}")


@click.command("demo")
@with_appcontext
@click.option("--credits", default="100")
def demo(credits):
    """Seed the catalogue when empty, create the demo account, print a token and a curl line."""
    if AIModel.select().count() == 0:
        seed.upsert(seed.load_file(current_app.config["MODELS_FILE"]))
        current_app.extensions["tollgate"].registry.invalidate()
    acct = billing.account("demo")
    if acct.balance == 0:
        billing.credit(acct.id, billing.to_micro(credits), "demo credits")
    token = auth.issue_token("demo", expires_in=30 * 86400)
    conf = current_app.config
    click.echo(f"\nDemo account 'demo' has {account_body(Account.get_by_id(acct.id))['balance']} credits.")
    click.echo(f"Token (30 days):\n  {token}\n\nTry:\n  curl -s http://{conf['HOST']}:{conf['PORT']}"
               f"/api/v1/chat/completions -H 'Authorization: Bearer {token}' "
               f"-H 'Content-Type: application/json' -d '{{\"model\": \"{conf['DEFAULT_MODEL']}\", "
               f"\"max_tokens\": 64, \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n")


def register(app: Flask) -> None:
    for command in (seed_models, db_cli, holds_cli, accounts_cli, tokens_cli, keys_cli, demo):
        app.cli.add_command(command)


def main() -> None:
    """The `tollgate` console command: the ops commands on the app the environment configures."""
    from flask.cli import FlaskGroup

    from service import create_app

    FlaskGroup(create_app=lambda: create_app(), add_default_commands=False,
               help="Tollgate's ops commands (the app is configured from the environment and .env).")(
        prog_name="tollgate")
