from dpruner.cli import entry

raise SystemExit(entry())
