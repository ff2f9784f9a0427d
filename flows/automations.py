"""Create the automations of automations.yaml on the Prefect server (run by `make deploy`).

    python -m flows.automations [--file automations.yaml] [--config ibreports.toml]
                                [--within NAME=SECONDS ...]

Run after `prefect deploy --all` (deployment ids are filled in). Each ``notify`` action
becomes one ``send-notification`` per ``[alerts] urls`` entry of the config, through a
notification block ``ibreports-alert-N`` holding that URL; the Prefect server sends
those itself, so they arrive when the worker is dead. Automations and blocks of the
same names are replaced, so running it again is safe. Exit 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from ibreports.errors import ConfigError, IbreportsError

REPO = Path(__file__).resolve().parents[1]
BLOCK_PREFIX = "ibreports-alert-"
_DEPLOYMENT = re.compile(r"\{deployment:([^}/]+/[^}]+)\}")


def alert_urls(config: str | None) -> list[str]:
    """The config's resolved [alerts] URLs; none when there is no config file."""
    from ibreports.config import config_path, load_config

    path = config_path(config)
    if not Path(path).exists():
        return []
    cfg = load_config(path)
    return [url.get() for url in cfg.alerts.urls]


def save_blocks(urls: list[str]) -> list[str]:
    """One notification block per URL (replacing earlier ones); returns their document ids.

    Prefect's SlackWebhook block hands its URL to apprise unchanged unless it is a Slack
    URL, so it carries any apprise URL the [alerts] section accepts.
    """
    from prefect.blocks.notifications import SlackWebhook

    ids = []
    for index, url in enumerate(urls):
        block = SlackWebhook(url=url)
        ids.append(str(block.save(f"{BLOCK_PREFIX}{index}", overwrite=True)))
    return ids


def expand(automation: dict[str, Any], deployments: dict[str, str], blocks: list[str],
           within: dict[str, int]) -> dict[str, Any] | None:
    """The automation with ids filled in and ``notify`` expanded; None if it would do nothing."""
    automation = copy.deepcopy(automation)
    trigger = automation["trigger"]
    def fill(value: str) -> str:
        return _DEPLOYMENT.sub(lambda m: deployments[m.group(1)], value)

    for key in ("match", "match_related"):
        for name, value in list(trigger.get(key, {}).items()):
            if isinstance(value, str):
                trigger[key][name] = fill(value)
            elif isinstance(value, list):  # any of several resources (e.g. the scheduled deployments)
                trigger[key][name] = [fill(item) for item in value]
    if automation["name"] in within:
        trigger["within"] = within[automation["name"]]
    actions = []
    for action in automation["actions"]:
        if "notify" in action:
            actions += [{"type": "send-notification", "block_document_id": block, **action["notify"]}
                        for block in blocks]
        else:
            actions.append(action)
    automation["actions"] = actions
    return automation if actions else None


def create_all(path: Path, config: str | None, within: dict[str, int], out=sys.stdout) -> list[str]:
    """Create (or replace) every automation of ``path``; returns the names created."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    automations = yaml.safe_load(path.read_text())["automations"]
    unknown = set(within) - {a["name"] for a in automations}
    if unknown:
        raise ConfigError(f"--within names no automation of {path}: {', '.join(sorted(unknown))}.",
                          f"Use one of: {', '.join(a['name'] for a in automations)}.")
    urls = alert_urls(config)
    blocks = save_blocks(urls)
    if not urls:
        print("No [alerts] urls in the config: crashed runs are still marked Crashed, but nobody is told "
              "of failed, crashed or cancelled runs and the dead-man's switch is not created.", file=out)
    wanted = set(_DEPLOYMENT.findall(json.dumps(automations)))  # the comments name none
    created = []
    with get_client(sync_client=True) as client:
        deployments = {}
        for name in wanted:
            try:
                deployments[name] = str(client.read_deployment_by_name(name).id)
            except Exception as exc:  # noqa: BLE001 - ObjectNotFound, or the API's own error
                raise ConfigError(f"Deployment {name} is not on the Prefect server ({type(exc).__name__}).",
                                  "Run `prefect deploy --all` first (make deploy does both).") from None
        for automation in automations:
            for old in client.read_automations_by_name(automation["name"]):
                client.delete_automation(old.id)
            body = expand(automation, deployments, blocks, within)
            if body is None:
                continue
            client.create_automation(AutomationCore.model_validate(body))
            created.append(automation["name"])
            print(f"automation {automation['name']}: created ({len(blocks)} alert target(s))", file=out)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.automations", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=REPO / "automations.yaml", help="automations file")
    parser.add_argument("--config", help="ibreports config (default: $IBREPORTS_CONFIG or ./ibreports.toml)")
    parser.add_argument("--within", action="append", default=[], metavar="NAME=SECONDS",
                        help="override one automation's time window (e.g. a shorter dead-man's switch)")
    args = parser.parse_args(argv)
    try:
        within = {}
        for item in args.within:
            name, _, seconds = item.partition("=")
            if not seconds.isdigit():
                raise ConfigError(f"--within {item!r} is not NAME=SECONDS.", "Write e.g. --within NAME=93600.")
            within[name] = int(seconds)
        create_all(args.file, args.config, within)
    except IbreportsError as exc:
        print(f"error: {exc.message}\n  remedy: {exc.remedy}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
