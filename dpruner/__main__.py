from dpruner.cli import main

raise SystemExit(main())
