"""The workflow's steps, one module each: `register(subparsers)` adds the step's subcommand of
`python -m dpruner` (its flags) and sets the function that runs it (dpruner.cli dispatches)."""
