from converge.cli import entry

raise SystemExit(entry())
