"""`check-config`: the schema and the preflight of a config file, no model work."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-config", help="schema and preflight of a config file, no model work"
    )
    p.add_argument("config", help="a config file")
    p.add_argument("--hub", action="store_true", help="also load hub sources (downloads data)")
    p.set_defaults(func=run)


def run(args) -> dict:
    from dpruner.config import load_config
    from dpruner.preflight import check_config

    config = load_config(args.config)
    check_config(config, source=args.config, check_hub=args.hub)
    return {"config": args.config, "preflight": "passed"}
